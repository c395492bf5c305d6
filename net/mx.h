/*
 * mx.h - next hops to addresses for the SMTP client: the MX routing of RFC
 * 5321 section 5.1 on net/dns, as an smtpc_resolver.
 *
 * A bare domain is looked up as MX: the records sorted by preference, equal
 * preferences shuffled; no MX (NODATA) is the implicit MX, the domain's own
 * addresses; a null MX (RFC 7505) is PERM 556 5.1.10; a domain that does
 * not exist is PERM 550 5.4.4 (Postfix's "Host or domain name not found");
 * a temporary failure is TEMP 451 4.4.3. An MX host that is this cluster
 * (its name is one of self_names, or one of its addresses is one of
 * self_addrs) ends the list at its preference: the hosts preferred over it
 * are kept, and when none is, the mail would loop back to us (PERM 550
 * 5.4.6, "mail for D loops back to myself"). "[name]" is the name's own
 * addresses, no MX lookup; a literal ("192.0.2.1", "[192.0.2.1]",
 * "[2001:db8::1]") is itself. Each host's A and AAAA are asked at once (as
 * inet_protocols allows); their order follows address_preference. A host
 * whose address lookups all fail is skipped; if no host has an address,
 * the route is TEMP when any lookup failed temporarily, else PERM 5.4.4.
 * As in Postfix, only MX lookups are checked for loops, not "[name]" or a
 * literal (a content filter on [127.0.0.1]:10025 is this host's address);
 * a literal of a family inet_protocols turns off is PERM 5.4.4. At most 10 MX hosts are looked up;
 * the targets are deduplicated by address and cut at address_limit.
 *
 * MTA-STS enforce (smtpc_resolve_opts.mx_patterns, RFC 8461 4.1): MX hosts
 * (the implicit MX too) that match none of the patterns are left out
 * before their addresses are asked; none left is TEMP 451 4.7.5.
 *
 * smtpc_route.mx_secure (what REQUIRETLS needs, RFC 8689 4.2.1): true for
 * a literal and "[name]" (no MX lookup), and for a name whose MX answer
 * (or its NODATA) had the AD bit from a resolver dns_ad_trusted believes;
 * every answer carries AD, so this costs no query, DANE or not.
 *
 * DANE (smtpc_resolve_opts.dane, and dns_ad_trusted of the resolver): when
 * the MX answer (or its NODATA) had the AD bit (RFC 7672 2.2.1; "[name]":
 * always) and a host's A/AAAA answers did (2.2.2), the TLSA records of
 * "_PORT._tcp.HOST" are asked, HOST the MX host name as given (a CNAME in
 * front of it is not followed, a simplification of 2.2.3). Validated
 * records make the host's targets DANE (smtpc_target.dane, with the usable
 * records: usage 2 or 3, digests of at most SMTPC_TLSA_DATA_MAX octets);
 * none, or an insecure answer, is no DANE; a failed lookup leaves the host
 * out, and with no host left the route is TEMP 450 4.7.5 (dane_unusable).
 * Literals never have DANE. Without opts->dane, no TLSA query at all.
 *
 * Thread: the loop's only. Owns: struct mx and the lookups in flight.
 */
#ifndef HAMR_NET_MX_H
#define HAMR_NET_MX_H

#include <stddef.h>
#include <stdint.h>

#include "net/dns.h"
#include "net/smtpc.h"

enum mx_inet {
    MX_INET_ALL = 0, /* IPv4 and IPv6 */
    MX_INET_IPV4 = 1,
    MX_INET_IPV6 = 2,
};

enum mx_pref {
    MX_PREF_ANY = 0,  /* each host's addresses shuffled */
    MX_PREF_IPV6 = 1, /* IPv6 first, then IPv4 */
    MX_PREF_IPV4 = 2,
};

#define MX_SELF_MAX 64

struct mx_config {
    unsigned address_limit; /* targets returned at most; 0: 5 */
    enum mx_inet inet_protocols;
    enum mx_pref address_preference;
    /* This cluster, for the loop check: names (no trailing dot, any case) and addresses. */
    char self_names[MX_SELF_MAX][DNS_NAME_MAX + 1];
    size_t n_self_names;
    struct dns_addr self_addrs[MX_SELF_MAX]; /* ttl unused */
    size_t n_self_addrs;
};

struct mx;

/*
 * mx_new - routing on dns (borrowed; must outlive it) and its loop; cfg
 * copied. 0, or HAMR_EINVAL (counts over MX_SELF_MAX, an enum or a self
 * address family out of range) or HAMR_ENOMEM.
 */
int mx_new(struct dns *dns, const struct mx_config *cfg, struct mx **out);

/* mx_resolver - the smtpc_resolver of m (valid as long as m). */
const struct smtpc_resolver *mx_resolver(struct mx *m);

/*
 * mx_free - end m. Every route still being resolved is called back first,
 * from inside mx_free, with SMTPC_TEMP "4.4.3 shutdown" (the contract of
 * smtpc_resolver: exactly once unless cancelled); resolve fails with
 * HAMR_ESHUTDOWN from then on. Call it before dns_close of m's resolver.
 * m's memory goes when its timer's close callback runs, on the loop's
 * next turn (run the loop before uv_loop_close). NULL is fine.
 */
void mx_free(struct mx *m);

#endif
