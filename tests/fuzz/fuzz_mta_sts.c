/*
 * fuzz_mta_sts.c - libFuzzer target for the MTA-STS parsers of
 * net/mta_sts_policy.c: the _mta-sts TXT record, the policy file a web
 * server sends, and MX matching against what was parsed.
 *
 * Input: "text[\0host]". The text (all of the input up to its first NUL)
 * is parsed both as a TXT record and as a policy file (one corpus serves
 * both); when a policy was parsed, host (what follows the NUL; without
 * one, the text's first line) is matched against it as an MX host name.
 *
 * Properties checked:
 *   - sts_txt_parse returns 0, HAMR_EINVAL or HAMR_ENOTFOUND; on 0 the id
 *     is 1 to STS_ID_MAX letters and digits and the input starts with
 *     "v=STSv1";
 *   - sts_policy_parse returns 0 or HAMR_EINVAL, with a reason on
 *     HAMR_EINVAL, the same answer with no room for one, and a zeroed
 *     policy; on 0 the mode is one of the three, max_age within bounds,
 *     1 to STS_MX_MAX patterns unless the mode is none, each a lower-case
 *     host name (or "*." one) of at most STS_HOST_MAX octets;
 *   - every parsed pattern matches itself written in upper case with a
 *     trailing dot ("*.rest" as "X.REST."), and a wildcard never matches
 *     its own rest nor two labels before it;
 *   - sts_mx_match on an arbitrary host reads only within bounds.
 *
 * Security note: the input is arbitrary bytes, as from a hostile zone or
 * policy server.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "net/mta_sts.h"
#include "fuzz_common.h"

/* fuzz_sts_alnum - an ASCII letter or digit. */
static bool fuzz_sts_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* fuzz_sts_txt - the TXT record properties. */
static void fuzz_sts_txt(const char *msg, size_t len)
{
    char id[STS_ID_MAX + 1];
    int rv = sts_txt_parse(msg, len, id, sizeof(id));
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL || rv == HAMR_ENOTFOUND);
    if (rv != 0)
        return;
    FUZZ_CHECK(len >= 7 && memcmp(msg, "v=STSv1", 7) == 0);
    size_t n = strnlen(id, sizeof(id));
    FUZZ_CHECK(n >= 1 && n <= STS_ID_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(fuzz_sts_alnum(id[i]));
}

/* fuzz_sts_patterns - each pattern well formed and matching itself in another case and form. */
static void fuzz_sts_patterns(const struct sts_policy *p)
{
    char host[STS_HOST_MAX + 8];
    for (size_t i = 0; i < p->n_mx; i++) {
        const char *pat = p->mx[i];
        size_t n = strnlen(pat, sizeof(p->mx[i]));
        FUZZ_CHECK(n >= 1 && n <= STS_HOST_MAX);
        bool wild = n >= 2 && pat[0] == '*' && pat[1] == '.';
        for (size_t k = wild ? 2 : 0; k < n; k++)
            FUZZ_CHECK(pat[k] == '.' || pat[k] == '-' || (pat[k] >= 'a' && pat[k] <= 'z') ||
                       (pat[k] >= '0' && pat[k] <= '9'));
        /* Upper case, trailing dot, the wildcard as one label "X". */
        for (size_t k = 0; k < n; k++)
            host[k] = pat[k] >= 'a' && pat[k] <= 'z' ? (char)(pat[k] - 'a' + 'A') : pat[k];
        if (wild)
            host[0] = 'X';
        host[n] = '.';
        host[n + 1] = '\0';
        FUZZ_CHECK(sts_mx_match(p, host));
        if (wild) {
            /* Its rest alone, unless another pattern names it. */
            struct sts_policy one = *p;
            memcpy(one.mx[0], pat, n + 1);
            one.n_mx = 1;
            FUZZ_CHECK(!sts_mx_match(&one, pat + 2));
            if (n + 2 <= STS_HOST_MAX) {
                /* Two labels before the rest: "a.b.rest". */
                host[0] = 'a';
                host[1] = '.';
                host[2] = 'b';
                memcpy(host + 3, pat + 1, n);
                FUZZ_CHECK(!sts_mx_match(&one, host));
            }
        }
    }
}

/* fuzz_sts_policy - the policy properties; returns whether p holds a policy. */
static bool fuzz_sts_policy(const char *msg, size_t len, struct sts_policy *p)
{
    char why[160];
    int rv = sts_policy_parse(msg, len, p, why, sizeof(why));
    struct sts_policy again;
    FUZZ_CHECK(sts_policy_parse(msg, len, &again, NULL, 0) == rv);
    if (rv != 0) {
        static const struct sts_policy zero;
        FUZZ_CHECK(rv == HAMR_EINVAL);
        FUZZ_CHECK(why[0] != '\0');
        FUZZ_CHECK(memcmp(p, &zero, sizeof(zero)) == 0);
        return false;
    }
    FUZZ_CHECK(p->mode == STS_MODE_NONE || p->mode == STS_MODE_TESTING ||
               p->mode == STS_MODE_ENFORCE);
    FUZZ_CHECK(p->max_age <= STS_MAX_AGE_MAX);
    FUZZ_CHECK(p->n_mx <= STS_MX_MAX);
    FUZZ_CHECK(p->mode == STS_MODE_NONE || p->n_mx >= 1);
    fuzz_sts_patterns(p);
    return true;
}

/* LLVMFuzzerTestOneInput - one input as a TXT record, a policy, and a host to match. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t len = nul != NULL ? (size_t)(nul - data) : size;
    /* A copy of exactly the text, so that ASan sees any read past its end. */
    char *msg = malloc(len ? len : 1);
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, data, len);
    fuzz_sts_txt(msg, len);
    static struct sts_policy p;
    if (fuzz_sts_policy(msg, len, &p)) {
        const char *from = nul != NULL ? (const char *)nul + 1 : msg;
        size_t n = nul != NULL ? size - len - 1 : len;
        const char *nl = memchr(from, '\n', n);
        if (nl != NULL)
            n = (size_t)(nl - from);
        char *host = malloc(n + 1);
        FUZZ_CHECK(host != NULL);
        memcpy(host, from, n);
        host[n] = '\0';
        (void)sts_mx_match(&p, host);
        free(host);
    }
    free(msg);
    return 0;
}
