/* smtp_addr.h - the mail address grammar (RFC 5321 4.1.2, 4.1.3, 4.5.3.1), pure: no I/O. */
#ifndef HAMR_NET_SMTP_ADDR_H
#define HAMR_NET_SMTP_ADDR_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 5321 4.5.3.1.1-3: local part 64, domain 255, path 256 octets (the path with its <>). */
#define SMTP_ADDR_LOCAL_MAX 64
#define SMTP_ADDR_DOMAIN_MAX 255
#define SMTP_ADDR_PATH_MAX 256
#define SMTP_ADDR_LITERAL_MAX 64 /* octets between [ and ]: "IPv6:" and the longest IPv6 text */

/*
 * Domain rules: which octets and shapes smtp_addr_domain_scan accepts.
 * Without any flag a domain is RFC 5321's: sub-domains of Let-dig
 * [Ldh-str] (a label starts and ends with a letter or digit) joined by
 * single dots, at most SMTP_ADDR_DOMAIN_MAX octets, no label limit.
 */
#define SMTP_ADDR_DOM_LITERAL 0x01     /* an address literal [IPv4] / [IPv6:...] (RFC 5321 4.1.3) */
#define SMTP_ADDR_DOM_EDGE_HYPHEN 0x02 /* a label may start or end with '-' */
#define SMTP_ADDR_DOM_UNDERSCORE 0x04  /* '_' in labels (_dmarc.example.com style host names) */
#define SMTP_ADDR_DOM_LABEL63 0x08     /* labels of at most 63 octets (RFC 1035 2.3.4) */
#define SMTP_ADDR_DOM_FINAL_DOT 0x10   /* one '.' may end the name ("example.com.") */
#define SMTP_ADDR_DOM_SUFFIX 0x20      /* one '.' may start it (".example.com": its subdomains) */
/*
 * SMTPUTF8 (RFC 6531 3.3): a label may hold well-formed UTF-8 (a U-label),
 * taken octet for octet: no IDNA conversion to or from A-labels, so
 * "b\xc3\xbccher.example" and "xn--bcher-kva.example" are two names here.
 */
#define SMTP_ADDR_DOM_UTF8 0x40

/*
 * The rule sets hamr's callers use: MAIL FROM / RCPT TO (smtpd_session),
 * relay_recipients entries (smtpd_rcptmap), host names in the
 * configuration, and the configuration's domain keys (relay_domains,
 * [transport], [tls_policy]).
 */
#define SMTP_ADDR_DOM_PATH SMTP_ADDR_DOM_LITERAL
#define SMTP_ADDR_DOM_TABLE SMTP_ADDR_DOM_EDGE_HYPHEN
#define SMTP_ADDR_DOM_HOST                                                          \
    (SMTP_ADDR_DOM_EDGE_HYPHEN | SMTP_ADDR_DOM_UNDERSCORE | SMTP_ADDR_DOM_LABEL63 | \
     SMTP_ADDR_DOM_FINAL_DOT)
#define SMTP_ADDR_DOM_CONFIG (SMTP_ADDR_DOM_HOST | SMTP_ADDR_DOM_SUFFIX)

/*
 * smtp_addr_domain_scan - a domain (or, with SMTP_ADDR_DOM_LITERAL, an
 * address literal) under rules at p, reading no further than end. Returns
 * the end of the domain, or NULL if none starts at p. Whatever follows it
 * is the caller's to judge. *literal (may be NULL) says whether it was a
 * literal. With SMTP_ADDR_DOM_SUFFIX the leading dot is not counted in
 * the length.
 */
const char *smtp_addr_domain_scan(const char *p, const char *end, unsigned rules, bool *literal);

/* smtp_addr_domain_ok - is d[0..len) exactly one domain under rules? */
bool smtp_addr_domain_ok(const char *d, size_t len, unsigned rules);

/* Local part rules for smtp_addr_local_scan and smtp_addr_dot_string_ok. */
#define SMTP_ADDR_LOCAL_QUOTED 0x01 /* a Quoted-string too (RFC 5321 4.1.2) */
/*
 * SMTPUTF8 (RFC 6531 3.3, RFC 6532 3.2): well-formed UTF-8 characters
 * (smtp_utf8_valid: no C1 control) count as atext and qtext.
 */
#define SMTP_ADDR_LOCAL_UTF8 0x02

/*
 * smtp_addr_local_scan - a local part at p, reading no further than end:
 * a Dot-string of RFC 5322 atext, or with SMTP_ADDR_LOCAL_QUOTED also a
 * Quoted-string (RFC 5321 4.1.2: printable ASCII, "\" escapes one printable
 * octet); with SMTP_ADDR_LOCAL_UTF8 either may hold UTF-8 characters.
 * Returns its end (after the closing quote) or NULL. *routed (may be NULL)
 * is set when it holds '%' or '!', or inside quotes '@', '%' or '!': a
 * route we would not know how to follow. Length is not checked here.
 */
const char *smtp_addr_local_scan(const char *p, const char *end, unsigned rules, bool *routed);

/*
 * smtp_addr_dot_string_ok - is p[0..len) exactly one Dot-string (RFC 5322
 * dot-atom; with SMTP_ADDR_LOCAL_UTF8 in rules, UTF-8 characters too)?
 */
bool smtp_addr_dot_string_ok(const char *p, size_t len, unsigned rules);

/* smtp_addr - a parsed mailbox from a reverse-path or forward-path. */
struct smtp_addr {
    char text[SMTP_ADDR_PATH_MAX + 1]; /* the mailbox: no <>, no source route; "" for <> */
    bool null_path;                    /* <> */
    bool has_domain;                   /* false only for <postmaster> */
    bool literal;                      /* the domain is an address literal [..] */
    bool routed;                       /* the local part holds %, ! or a quoted @ */
    size_t domain;                     /* offset of the domain in text (its length without one) */
};

/* smtp_addr_parse_path flags. */
#define SMTP_ADDR_NULL_OK 0x01       /* "<>" is allowed (reverse-path, RFC 5321 4.1.1.2) */
#define SMTP_ADDR_POSTMASTER_OK 0x02 /* "<postmaster>", any case, no domain (RFC 5321 4.1.1.3) */
/*
 * SMTPUTF8 was given (RFC 6531 3.3): UTF-8 characters in the local part
 * and U-labels in the domain (SMTP_ADDR_LOCAL_UTF8, SMTP_ADDR_DOM_UTF8).
 * Source-route domains stay ASCII.
 */
#define SMTP_ADDR_UTF8_OK 0x04

/*
 * smtp_addr_parse_path - parse "<path>" at *pp (a NUL-terminated string,
 * borrowed for the call) into a (RFC 5321 4.1.2: Path, Reverse-path,
 * Forward-path). A source route ("@a,@b:") is checked and dropped (RFC
 * 5321 4.1.1.3, App. C: SHOULD accept, MAY ignore). Enforces the
 * local-part and path limits of 4.5.3.1 and the domain limit. The angle
 * brackets are required: a bare address is a syntax error. On success *pp
 * points after the '>' and 0 is returned. HAMR_EPROTO: without
 * SMTP_ADDR_UTF8_OK, an octet >= 0x80 anywhere from *pp to the end of the
 * string (parameters too), which without SMTPUTF8 (RFC 6531) cannot be
 * taken; HAMR_EINVAL: any other syntax error, malformed UTF-8 included.
 * Safe on untrusted input; a->text is then printable ASCII, or with
 * SMTP_ADDR_UTF8_OK printable ASCII and well-formed UTF-8 characters
 * (smtp_utf8_valid holds for it).
 */
int smtp_addr_parse_path(const char **pp, unsigned flags, struct smtp_addr *a);

/* smtp_addr_domain_of - the domain of addr: after its last '@', or all of addr if none. */
const char *smtp_addr_domain_of(const char *addr);

/*
 * smtp_addr_lower - ASCII lower case in place of s[0..len) (domains compare
 * without case). Octets >= 0x80 (UTF-8) are left as they are: no Unicode
 * case folding, so UTF-8 text compares octet for octet.
 */
void smtp_addr_lower(char *s, size_t len);

/*
 * smtp_addr_key - the comparison form of addr (a mailbox as
 * smtp_addr_parse_path left it) into key (size octets): lower case, a
 * quoted local part without its quotes and backslashes. Its length goes to
 * *len and the offset of its '@' to *at. false if addr has no '@' or the
 * key would not fit (size - 1 octets at most).
 */
bool smtp_addr_key(const char *addr, char *key, size_t size, size_t *len, size_t *at);

/* smtp_addr_domain_match results. */
#define SMTP_ADDR_MATCH_NONE 0
#define SMTP_ADDR_MATCH_EXACT 1  /* the domain is the pattern */
#define SMTP_ADDR_MATCH_SUFFIX 2 /* the pattern is ".d" and the domain a subdomain of d */

/*
 * smtp_addr_domain_match - does domain[0..len) match pattern ("d": that
 * domain; ".d": its subdomains, not d itself), without regard to ASCII
 * case? An empty pattern matches nothing. A U-label compares octet for
 * octet (no IDNA): "b\xc3\xbccher.example" does not match
 * "xn--bcher-kva.example", but does match ".example".
 */
int smtp_addr_domain_match(const char *domain, size_t len, const char *pattern);

#endif
