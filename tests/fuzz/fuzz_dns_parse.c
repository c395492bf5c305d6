/*
 * fuzz_dns_parse.c - libFuzzer target for net/dns_parse, the parser of the
 * DNS answers hamr's resolver gets from the network.
 *
 * Input: byte 0 picks the type asked for (MX, A, AAAA, TXT, TLSA); the
 * rest is the response message, as from a hostile or broken server.
 *
 * Properties checked:
 *   - the result is 0 or HAMR_EPROTO (HAMR_ENOMEM aside), and on an error
 *     nothing stays allocated and the reason is set;
 *   - on 0 the status is one of the four, records come only with DNS_OK
 *     and number 1..DNS_PARSE_RECORDS_MAX, and without them DNS_OK is never
 *     reported;
 *   - every record is within bounds: MX hosts are NUL-terminated names of
 *     at most DNS_NAME_MAX characters, addresses of their family, TXT text
 *     NUL-terminated at its length, TLSA data no longer than the message.
 *
 * Security note: the input is arbitrary bytes, as from a hostile server.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include "util/err.h"
#include "net/dns_parse.h"
#include "fuzz_common.h"

/* fuzz_dns_sink - where fuzz_dns_touch leaves its sum, so that the reads are not optimised away. */
static volatile uint8_t fuzz_dns_sink;

/* fuzz_dns_touch - read every octet of p[0..n), for ASan to check the bounds. */
static void fuzz_dns_touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= b[i];
    fuzz_dns_sink = x;
}

/* fuzz_dns_check - the properties of one successful parse of len octets. */
static void fuzz_dns_check(const struct dns_parsed *p, size_t len)
{
    FUZZ_CHECK(p->status == DNS_OK || p->status == DNS_NXDOMAIN || p->status == DNS_NODATA ||
               p->status == DNS_TEMPFAIL);
    FUZZ_CHECK((p->n > 0) == (p->status == DNS_OK));
    FUZZ_CHECK(p->n <= DNS_PARSE_RECORDS_MAX);
    for (size_t i = 0; i < p->n; i++) {
        switch (p->type) {
            case DNS_TYPE_MX: {
                const struct dns_mx *mx = (const struct dns_mx *)p->records + i;
                FUZZ_CHECK(strnlen(mx->host, sizeof(mx->host)) <= DNS_NAME_MAX);
                break;
            }
            case DNS_TYPE_A:
            case DNS_TYPE_AAAA: {
                const struct dns_addr *a = (const struct dns_addr *)p->records + i;
                FUZZ_CHECK(a->family == (p->type == DNS_TYPE_A ? AF_INET : AF_INET6));
                break;
            }
            case DNS_TYPE_TXT: {
                const struct dns_txt *t = (const struct dns_txt *)p->records + i;
                FUZZ_CHECK(t->len < len && t->text[t->len] == '\0');
                fuzz_dns_touch(t->text, t->len);
                break;
            }
            case DNS_TYPE_TLSA: {
                const struct dns_tlsa *t = (const struct dns_tlsa *)p->records + i;
                FUZZ_CHECK(t->len < len);
                fuzz_dns_touch(t->data, t->len);
                break;
            }
        }
    }
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one response parsed as the answer to the type byte 0 names. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum dns_type types[] = {DNS_TYPE_MX, DNS_TYPE_A, DNS_TYPE_AAAA, DNS_TYPE_TXT,
                                          DNS_TYPE_TLSA};
    struct fuzz_in in = {data, size};
    enum dns_type type = types[fuzz_u8(&in) % (sizeof(types) / sizeof(types[0]))];

    /* A copy of exactly the message, so that ASan sees any read past its end. */
    uint8_t *msg = malloc(in.n ? in.n : 1);
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, in.p, in.n);
    struct dns_parsed p;
    int rv = dns_parse(msg, in.n, type, &p);
    if (rv == 0) {
        fuzz_dns_check(&p, in.n);
    } else {
        FUZZ_CHECK(rv == HAMR_EPROTO || rv == HAMR_ENOMEM);
        FUZZ_CHECK(p.records == NULL && p.blob == NULL && p.n == 0);
        FUZZ_CHECK(rv == HAMR_ENOMEM || p.why[0] != '\0');
    }
    dns_parsed_clear(&p);
    free(msg);
    return 0;
}
