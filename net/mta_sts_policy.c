/*
 * mta_sts_policy.c - the pure half of net/mta_sts.h: the _mta-sts TXT
 * record (RFC 8461 3.1), the policy file (RFC 8461 3.2) and MX matching
 * (RFC 8461 4.1). No I/O, no allocation, no libuv, no OpenSSL.
 *
 * Security: everything here parses untrusted input (a zone's TXT record,
 * a web server's body). Every loop is bounded by the input's length, the
 * policy by STS_POLICY_MAX and STS_MX_MAX, and reasons quote at most a
 * few escaped octets of it (SECURITY.md N10).
 *
 * Strictness: the grammar is RFC 8461's, with three leniencies real
 * policy files need: LF alone ends a line as CRLF does (the RFC allows
 * both), empty lines are skipped, and spaces or tabs before a line end
 * are ignored. A known key twice (version, mode, max_age) refuses the
 * policy: which one a peer meant cannot be known.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/hostname.h"
#include "util/err.h"
#include "util/log.h"
#include "net/mta_sts.h"

/* Octets of untrusted text quoted in a reason at most. */
#define STS_QUOTE_MAX 40

/* sts_mode_name - see mta_sts.h. */
const char *sts_mode_name(enum sts_mode mode)
{
    switch (mode) {
        case STS_MODE_NONE:
            return "none";
        case STS_MODE_TESTING:
            return "testing";
        case STS_MODE_ENFORCE:
            return "enforce";
    }
    return "?";
}

/* sts_is_wsp - WSP of RFC 5234: a space or a tab. */
static bool sts_is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* sts_lower - ASCII lower case. */
static char sts_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/*
 * sts_ext_name_ok - an extension name (RFC 8461 3.1 sts-ext-name, 3.2
 * sts-policy-ext-name): a letter or digit, then up to 31 letters, digits,
 * '_', '-' or '.'.
 */
static bool sts_ext_name_ok(const char *p, size_t n)
{
    if (n == 0 || n > 32 || !hostname_alnum((unsigned char)p[0]))
        return false;
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!hostname_alnum(c) && c != '_' && c != '-' && c != '.')
            return false;
    }
    return true;
}

/* sts_txt_field_end - the end of the field starting at i: the next ';' (or WSP before it) or len.
 */
static size_t sts_txt_field_end(const char *t, size_t i, size_t len)
{
    while (i < len && t[i] != ';' && !sts_is_wsp((unsigned char)t[i]))
        i++;
    return i;
}

/* sts_txt_parse - see mta_sts.h. */
int sts_txt_parse(const char *txt, size_t len, char *id, size_t idlen)
{
    static const char version[] = "v=STSv1";
    const size_t vlen = sizeof(version) - 1;
    bool have_id = false;

    if (len < vlen || memcmp(txt, version, vlen) != 0 ||
        (len > vlen && txt[vlen] != ';' && !sts_is_wsp((unsigned char)txt[vlen])))
        return HAMR_ENOTFOUND;
    if (idlen <= STS_ID_MAX)
        return HAMR_EINVAL;
    id[0] = '\0';
    size_t i = vlen;
    for (;;) {
        /* sts-field-delim = *WSP ";" *WSP; a last one may end the record. */
        while (i < len && sts_is_wsp((unsigned char)txt[i]))
            i++;
        if (i == len)
            break;
        if (txt[i] != ';')
            return HAMR_EINVAL;
        i++;
        while (i < len && sts_is_wsp((unsigned char)txt[i]))
            i++;
        if (i == len)
            break;
        size_t start = i, end = sts_txt_field_end(txt, i, len);
        const char *eq = memchr(txt + start, '=', end - start);
        if (eq == NULL)
            return HAMR_EINVAL;
        size_t nlen = (size_t)(eq - (txt + start));
        const char *val = eq + 1;
        size_t vl = (size_t)((txt + end) - val);
        if (nlen == 2 && memcmp(txt + start, "id", 2) == 0) {
            /* sts-id = %s"id=" 1*32(ALPHA / DIGIT) */
            if (have_id || vl == 0 || vl > STS_ID_MAX)
                return HAMR_EINVAL;
            for (size_t k = 0; k < vl; k++)
                if (!hostname_alnum((unsigned char)val[k]))
                    return HAMR_EINVAL;
            memcpy(id, val, vl);
            id[vl] = '\0';
            have_id = true;
        } else {
            /* sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E): no '=', ';', space or control */
            if (!sts_ext_name_ok(txt + start, nlen) || vl == 0)
                return HAMR_EINVAL;
            for (size_t k = 0; k < vl; k++) {
                unsigned char c = (unsigned char)val[k];
                if (c < 0x21 || c > 0x7e || c == '=')
                    return HAMR_EINVAL;
            }
        }
        i = end;
    }
    if (!have_id) {
        id[0] = '\0';
        return HAMR_EINVAL;
    }
    return 0;
}

/*
 * sts_quote - at most STS_QUOTE_MAX octets of untrusted text into out
 * (log_printable: anything not printable ASCII as '?'); "..." marks a cut.
 */
static const char *sts_quote(const char *p, size_t n, char *out, size_t outlen)
{
    bool cut = n > STS_QUOTE_MAX;
    log_printable(out, outlen, p, cut ? STS_QUOTE_MAX : n);
    if (cut) {
        size_t o = strlen(out);
        snprintf(out + o, outlen - o, "...");
    }
    return out;
}

/* sts_why - the reason of a refusal into why (if any room): "line N: ...". */
__attribute__((format(printf, 4, 5))) static int sts_why(char *why,
                                                         size_t whylen,
                                                         unsigned line,
                                                         const char *fmt,
                                                         ...)
{
    va_list ap;
    if (whylen == 0)
        return HAMR_EINVAL;
    int n = line > 0 ? snprintf(why, whylen, "line %u: ", line) : 0;
    if (n < 0 || (size_t)n >= whylen)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(why + n, whylen - (size_t)n, fmt, ap);
    va_end(ap);
    return HAMR_EINVAL;
}

/*
 * sts_pattern_ok - an mx value (RFC 8461 3.2 sts-policy-mx-value = ["*."]
 * Domain), STS_HOST_MAX octets in all, "*." included: it must fit a
 * struct sts_policy mx slot and the replicated cache's bound.
 */
static bool sts_pattern_ok(const char *p, size_t n)
{
    if (n > STS_HOST_MAX)
        return false;
    if (n >= 2 && p[0] == '*' && p[1] == '.')
        return hostname_ok(p + 2, n - 2, STS_HOST_MAX);
    return hostname_ok(p, n, STS_HOST_MAX);
}

/* sts_policy_state - what a policy parse has seen so far. */
struct sts_policy_state {
    struct sts_policy *out;
    bool version, mode, max_age;
    unsigned line;
};

/*
 * sts_policy_field - one "key: value" line (value without the spaces
 * around it) into st. 0 or HAMR_EINVAL with why.
 */
static int sts_policy_field(struct sts_policy_state *st,
                            const char *key,
                            size_t klen,
                            const char *val,
                            size_t vlen,
                            char *why,
                            size_t whylen)
{
    struct sts_policy *p = st->out;
    char q[STS_QUOTE_MAX + 4];

    if (klen == 7 && memcmp(key, "version", 7) == 0) {
        if (st->version)
            return sts_why(why, whylen, st->line, "version given twice");
        if (vlen != 5 || memcmp(val, "STSv1", 5) != 0)
            return sts_why(why, whylen, st->line, "version \"%s\" unsupported",
                           sts_quote(val, vlen, q, sizeof(q)));
        st->version = true;
        return 0;
    }
    if (klen == 4 && memcmp(key, "mode", 4) == 0) {
        static const struct {
            const char *name;
            enum sts_mode mode;
        } modes[] = {
            {"none", STS_MODE_NONE}, {"testing", STS_MODE_TESTING}, {"enforce", STS_MODE_ENFORCE}};
        if (st->mode)
            return sts_why(why, whylen, st->line, "mode given twice");
        for (size_t i = 0; i < HAMR_ARRAY_LEN(modes); i++) {
            if (vlen == strlen(modes[i].name) && memcmp(val, modes[i].name, vlen) == 0) {
                p->mode = modes[i].mode;
                st->mode = true;
                return 0;
            }
        }
        return sts_why(why, whylen, st->line, "mode \"%s\" unknown",
                       sts_quote(val, vlen, q, sizeof(q)));
    }
    if (klen == 7 && memcmp(key, "max_age", 7) == 0) {
        /* sts-policy-max-age-value = 1*10(DIGIT) */
        uint64_t v = 0;
        if (st->max_age)
            return sts_why(why, whylen, st->line, "max_age given twice");
        if (vlen == 0 || vlen > 10)
            return sts_why(why, whylen, st->line, "max_age \"%s\" is not 1 to 10 digits",
                           sts_quote(val, vlen, q, sizeof(q)));
        for (size_t i = 0; i < vlen; i++) {
            if (val[i] < '0' || val[i] > '9')
                return sts_why(why, whylen, st->line, "max_age \"%s\" is not a number",
                               sts_quote(val, vlen, q, sizeof(q)));
            v = v * 10 + (uint64_t)(val[i] - '0');
        }
        if (v > STS_MAX_AGE_MAX)
            return sts_why(why, whylen, st->line, "max_age %llu over %u", (unsigned long long)v,
                           STS_MAX_AGE_MAX);
        p->max_age = (uint32_t)v;
        st->max_age = true;
        return 0;
    }
    if (klen == 2 && memcmp(key, "mx", 2) == 0) {
        if (!sts_pattern_ok(val, vlen))
            return sts_why(why, whylen, st->line, "mx \"%s\" is not a host name or *.host",
                           sts_quote(val, vlen, q, sizeof(q)));
        if (p->n_mx == STS_MX_MAX)
            return sts_why(why, whylen, st->line, "more than %d mx patterns", STS_MX_MAX);
        for (size_t i = 0; i < vlen; i++)
            p->mx[p->n_mx][i] = sts_lower(val[i]);
        p->mx[p->n_mx][vlen] = '\0';
        p->n_mx++;
        return 0;
    }
    /* An extension: ignored once its grammar is checked (RFC 8461 3.2). */
    if (!sts_ext_name_ok(key, klen))
        return sts_why(why, whylen, st->line, "key \"%s\" malformed",
                       sts_quote(key, klen, q, sizeof(q)));
    if (vlen == 0)
        return sts_why(why, whylen, st->line, "key \"%s\" has no value",
                       sts_quote(key, klen, q, sizeof(q)));
    return 0;
}

/* sts_policy_parse - see mta_sts.h. */
int sts_policy_parse(const char *text, size_t len, struct sts_policy *out, char *why, size_t whylen)
{
    struct sts_policy_state st = {.out = out};
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if (whylen > 0)
        why[0] = '\0';
    if (len > STS_POLICY_MAX) {
        rc = sts_why(why, whylen, 0, "policy of %zu octets over %d", len, STS_POLICY_MAX);
        goto fail;
    }
    size_t i = 0;
    while (i < len && rc == 0) {
        st.line++;
        /* The line: to LF, or CRLF; a CR anywhere else, a NUL or a control octet is refused. */
        size_t start = i, end = i;
        while (end < len && text[end] != '\n')
            end++;
        i = end < len ? end + 1 : end;
        if (end > start && text[end - 1] == '\r')
            end--;
        for (size_t k = start; k < end; k++) {
            unsigned char c = (unsigned char)text[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                rc = sts_why(why, whylen, st.line, "control octet 0x%02x", c);
                break;
            }
        }
        if (rc != 0)
            break;
        while (end > start && sts_is_wsp((unsigned char)text[end - 1]))
            end--;
        if (end == start)
            continue; /* an empty line: not in the grammar, harmless */
        const char *colon = memchr(text + start, ':', end - start);
        if (colon == NULL) {
            char q[STS_QUOTE_MAX + 4];
            rc = sts_why(why, whylen, st.line, "\"%s\" is not \"key: value\"",
                         sts_quote(text + start, end - start, q, sizeof(q)));
            break;
        }
        size_t klen = (size_t)(colon - (text + start));
        const char *val = colon + 1;
        while (val < text + end && sts_is_wsp((unsigned char)*val))
            val++;
        rc = sts_policy_field(&st, text + start, klen, val, (size_t)((text + end) - val), why,
                              whylen);
    }
    if (rc != 0)
        goto fail;
    if (!st.version)
        rc = sts_why(why, whylen, 0, "no version");
    else if (!st.mode)
        rc = sts_why(why, whylen, 0, "no mode");
    else if (!st.max_age)
        rc = sts_why(why, whylen, 0, "no max_age");
    else if (out->mode != STS_MODE_NONE && out->n_mx == 0)
        rc = sts_why(why, whylen, 0, "mode %s without mx", sts_mode_name(out->mode));
    if (rc == 0)
        return 0;
fail:
    memset(out, 0, sizeof(*out));
    return rc;
}

/* sts_pattern_match - see mta_sts.h. */
bool sts_pattern_match(const char *pat, const char *host)
{
    size_t hlen = strnlen(host, STS_HOST_MAX + 2);
    if (hlen > 0 && host[hlen - 1] == '.')
        hlen--;
    if (hlen == 0 || hlen > STS_HOST_MAX)
        return false;
    size_t plen = strnlen(pat, STS_HOST_MAX + 1);
    if (plen >= 2 && pat[0] == '*' && pat[1] == '.') {
        /* "*.rest": one non-empty label, then ".rest" (RFC 8461 4.1). */
        size_t rlen = plen - 1; /* ".rest" */
        if (hlen <= rlen || !hamr_strncaseeq(host + hlen - rlen, pat + 1, rlen))
            return false;
        size_t first = hlen - rlen;
        return first > 0 && memchr(host, '.', first) == NULL;
    }
    return plen == hlen && hamr_strncaseeq(host, pat, hlen);
}

/* sts_mx_match - see mta_sts.h. */
bool sts_mx_match(const struct sts_policy *p, const char *host)
{
    for (size_t i = 0; i < p->n_mx && i < STS_MX_MAX; i++)
        if (sts_pattern_match(p->mx[i], host))
            return true;
    return false;
}
