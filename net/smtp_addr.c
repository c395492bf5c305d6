/*
 * smtp_addr.c - the one mail address grammar of hamr (RFC 5321 4.1.2,
 * 4.1.3, 4.5.3.1; RFC 5322 3.2.3 atext).
 *
 * Owns nothing; pure functions over the caller's buffers, no allocation,
 * no I/O, no libuv. Exports the scanners for a domain and a local part,
 * the whole-path parser the SMTP session uses for MAIL FROM and RCPT TO,
 * and the comparison helpers: domain of an address, lower case, the lookup
 * key of the relay recipient map, and "d" / ".d" domain matching.
 *
 * One grammar, three strictnesses of domain. The SMTP session follows RFC
 * 5321 (Let-dig at both ends of a label, address literals); the relay
 * recipient file has always also taken a '-' at a label's edge; the
 * configuration's host names take '_' too, limit labels to 63 octets and
 * allow a final dot. The rule flags of smtp_addr.h name each difference,
 * so that every caller keeps what it accepted.
 *
 * SMTPUTF8 (RFC 6531 3.3) is a rule of its own: under it a local part may
 * hold UTF-8 characters and a domain U-labels, each character checked to be
 * well-formed as it is scanned. Nothing is case-folded or normalised
 * beyond ASCII, and no U-label is converted to an A-label (no IDNA).
 *
 * Errors: smtp_addr_parse_path returns HAMR_EINVAL (syntax) or HAMR_EPROTO
 * (8-bit octets without SMTPUTF8); the scanners return NULL, the checks
 * false.
 *
 * Security: parses untrusted network input. Every scan is bounded by its
 * end pointer or the string's NUL; a parsed mailbox fits its fixed buffer
 * (the path limit is checked before the copy) and is printable ASCII, or
 * under SMTPUTF8 printable ASCII and well-formed UTF-8.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtp_addr.h"
#include "net/smtp_ext.h"

/* smtp_addr_atext - RFC 5322 3.2.3 atext: letters, digits and !#$%&'*+-/=?^_`{|}~. */
static bool smtp_addr_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/*
 * smtp_addr_utf8_char - the length of the one well-formed UTF-8 character
 * of two to four octets at p (before end), 0 if there is none: an ASCII
 * octet, a malformed or cut sequence, a C1 control (smtp_utf8_valid).
 */
static size_t smtp_addr_utf8_char(const char *p, const char *end)
{
    unsigned char c = (unsigned char)*p;
    size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;

    if (n == 0 || (size_t)(end - p) < n || !smtp_utf8_valid(p, n))
        return 0;
    return n;
}

/* smtp_addr_label_char - may c appear in a label under rules (RFC 5321 Let-dig, Ldh-str)? */
static bool smtp_addr_label_char(unsigned char c, unsigned rules)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           (c == '_' && (rules & SMTP_ADDR_DOM_UNDERSCORE));
}

/* smtp_addr_literal_scan - "[IPv4]" or "[IPv6:...]" at p (RFC 5321 4.1.3); its end or NULL. */
static const char *smtp_addr_literal_scan(const char *p, const char *end)
{
    const char *close = memchr(p, ']', (size_t)(end - p));
    if (close == NULL || close - p - 1 <= 0 || close - p - 1 > SMTP_ADDR_LITERAL_MAX)
        return NULL;
    char lit[SMTP_ADDR_LITERAL_MAX + 1];
    size_t n = (size_t)(close - p - 1);
    memcpy(lit, p + 1, n);
    lit[n] = '\0';
    unsigned char bin[16];
    /* General-address-literal (a tag other than IPv6) is not taken: we could not route it. */
    if (inet_pton(AF_INET, lit, bin) != 1 &&
        !(hamr_strncaseeq(lit, "IPv6:", 5) && inet_pton(AF_INET6, lit + 5, bin) == 1))
        return NULL;
    return close + 1;
}

/* smtp_addr_domain_scan - Domain or address-literal at p under rules; its end or NULL. */
const char *smtp_addr_domain_scan(const char *p, const char *end, unsigned rules, bool *literal)
{
    if (literal != NULL)
        *literal = false;
    if (p < end && *p == '[') {
        if (!(rules & SMTP_ADDR_DOM_LITERAL))
            return NULL;
        const char *q = smtp_addr_literal_scan(p, end);
        if (q != NULL && literal != NULL)
            *literal = true;
        return q;
    }
    if ((rules & SMTP_ADDR_DOM_SUFFIX) && p < end && *p == '.')
        p++;
    const char *start = p;
    for (;;) {
        /* sub-domain = Let-dig [Ldh-str] */
        const char *label = p;
        size_t u;
        while (p < end) {
            if (smtp_addr_label_char((unsigned char)*p, rules))
                p++;
            else if ((rules & SMTP_ADDR_DOM_UTF8) && (u = smtp_addr_utf8_char(p, end)) > 0)
                p += u; /* RFC 6531 3.3: sub-domain =/ U-label */
            else
                break;
        }
        if (p == label)
            return NULL;
        if (!(rules & SMTP_ADDR_DOM_EDGE_HYPHEN) && (label[0] == '-' || p[-1] == '-'))
            return NULL;
        if ((rules & SMTP_ADDR_DOM_LABEL63) && p - label > 63)
            return NULL;
        if (p == end || *p != '.')
            break;
        p++;
        if ((rules & SMTP_ADDR_DOM_FINAL_DOT) &&
            (p == end || (!smtp_addr_label_char((unsigned char)*p, rules) &&
                          !((rules & SMTP_ADDR_DOM_UTF8) && smtp_addr_utf8_char(p, end) > 0))))
            break;
    }
    if (p - start > SMTP_ADDR_DOMAIN_MAX)
        return NULL;
    return p;
}

/* smtp_addr_domain_ok - the scan covers exactly d[0..len). */
bool smtp_addr_domain_ok(const char *d, size_t len, unsigned rules)
{
    return smtp_addr_domain_scan(d, d + len, rules, NULL) == d + len;
}

/* smtp_addr_quoted_scan - Quoted-string at p (on its '"') under rules; its end or NULL. */
static const char *smtp_addr_quoted_scan(const char *p,
                                         const char *end,
                                         unsigned rules,
                                         bool *routed)
{
    /* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; qtextSMTP / "\" %d32-126 */
    p++;
    for (;;) {
        if (p == end)
            return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        size_t u;
        if ((rules & SMTP_ADDR_LOCAL_UTF8) && (u = smtp_addr_utf8_char(p, end)) > 0) {
            p += u; /* RFC 6531 3.3: qtextSMTP =/ UTF8-non-ascii */
            continue;
        }
        if (c == '\\') {
            if (end - p < 2)
                return NULL;
            c = (unsigned char)p[1];
            p++;
        }
        if (c < 32 || c > 126)
            return NULL;
        if (c == '@' || c == '%' || c == '!')
            *routed = true;
        p++;
    }
}

/* smtp_addr_local_scan - Dot-string, or Quoted-string when rules allow; its end or NULL. */
const char *smtp_addr_local_scan(const char *p, const char *end, unsigned rules, bool *routed)
{
    bool dummy = false;
    if (routed == NULL)
        routed = &dummy;
    *routed = false;
    if ((rules & SMTP_ADDR_LOCAL_QUOTED) && p < end && *p == '"')
        return smtp_addr_quoted_scan(p, end, rules, routed);
    /* Dot-string = Atom *("." Atom); RFC 6532 3.2: atext =/ UTF8-non-ascii */
    for (;;) {
        const char *atom = p;
        size_t u;
        while (p < end) {
            if (smtp_addr_atext((unsigned char)*p)) {
                if (*p == '%' || *p == '!')
                    *routed = true;
                p++;
            } else if ((rules & SMTP_ADDR_LOCAL_UTF8) && (u = smtp_addr_utf8_char(p, end)) > 0) {
                p += u;
            } else {
                break;
            }
        }
        if (p == atom)
            return NULL;
        if (p == end || *p != '.')
            return p;
        p++;
    }
}

/* smtp_addr_dot_string_ok - the scan covers exactly p[0..len). */
bool smtp_addr_dot_string_ok(const char *p, size_t len, unsigned rules)
{
    return smtp_addr_local_scan(p, p + len, rules & SMTP_ADDR_LOCAL_UTF8, NULL) == p + len;
}

/* smtp_addr_parse_path - "<" [A-d-l ":"] Mailbox ">" or "<>" at *pp. */
int smtp_addr_parse_path(const char **pp, unsigned flags, struct smtp_addr *a)
{
    const char *p = *pp;
    const char *end = p + strlen(p);

    bool utf8 = (flags & SMTP_ADDR_UTF8_OK) != 0;

    memset(a, 0, sizeof(*a));
    for (const char *q = p; q < end && !utf8; q++)
        if ((unsigned char)*q >= 0x80)
            return HAMR_EPROTO;
    if (*p++ != '<')
        return HAMR_EINVAL;
    if (*p == '>') {
        if (!(flags & SMTP_ADDR_NULL_OK))
            return HAMR_EINVAL;
        a->null_path = true;
        *pp = p + 1;
        return 0;
    }
    if (*p == '@') {
        /* A-d-l = At-domain *( "," At-domain ) ":" */
        for (;;) {
            if (*p++ != '@')
                return HAMR_EINVAL;
            p = smtp_addr_domain_scan(p, end, SMTP_ADDR_DOM_PATH, NULL);
            if (p == NULL)
                return HAMR_EINVAL;
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p++ != ':')
                return HAMR_EINVAL;
            break;
        }
    }
    const char *local = p;
    p = smtp_addr_local_scan(p, end, SMTP_ADDR_LOCAL_QUOTED | (utf8 ? SMTP_ADDR_LOCAL_UTF8 : 0),
                             &a->routed);
    if (p == NULL)
        return HAMR_EINVAL;
    size_t local_len = (size_t)(p - local);
    if (local_len > SMTP_ADDR_LOCAL_MAX)
        return HAMR_EINVAL;
    const char *domain = NULL;
    if (*p == '@') {
        domain = ++p;
        p = smtp_addr_domain_scan(p, end, SMTP_ADDR_DOM_PATH | (utf8 ? SMTP_ADDR_DOM_UTF8 : 0),
                                  &a->literal);
        if (p == NULL)
            return HAMR_EINVAL;
        a->has_domain = true;
    } else if (!((flags & SMTP_ADDR_POSTMASTER_OK) && local_len == 10 &&
                 hamr_strncaseeq(local, "postmaster", 10))) {
        return HAMR_EINVAL;
    }
    if (*p != '>')
        return HAMR_EINVAL;
    size_t len = (size_t)(p - local);
    if (len + 2 > SMTP_ADDR_PATH_MAX)
        return HAMR_EINVAL;
    memcpy(a->text, local, len);
    a->text[len] = '\0';
    a->domain = domain ? (size_t)(domain - local) : len;
    *pp = p + 1;
    return 0;
}

/* smtp_addr_domain_of - after the last '@' (a quoted local part may hold one; a domain not). */
const char *smtp_addr_domain_of(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : addr;
}

/*
 * smtp_addr_lower - ASCII only: no locale, so the result is the same
 * everywhere; UTF-8 octets (>= 0x80) are never touched.
 */
void smtp_addr_lower(char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] = (char)(s[i] - 'A' + 'a');
}

/* smtp_addr_key - lower case, quotes and escapes of a quoted local part dropped. */
bool smtp_addr_key(const char *addr, char *key, size_t size, size_t *len, size_t *at)
{
    const char *sep = strrchr(addr, '@');
    size_t n = 0;

    if (sep == NULL || size == 0)
        return false;
    const char *p = addr, *end = sep;
    bool quoted = end - p >= 2 && p[0] == '"' && end[-1] == '"';
    if (quoted) {
        p++;
        end--;
    }
    while (p < end) {
        if (quoted && *p == '\\' && p + 1 < end)
            p++;
        if (n == size - 1)
            return false;
        key[n++] = *p++;
    }
    *at = n;
    for (p = sep; *p != '\0'; p++) {
        if (n == size - 1)
            return false;
        key[n++] = *p;
    }
    key[n] = '\0';
    smtp_addr_lower(key, n);
    *len = n;
    return true;
}

/*
 * smtp_addr_domain_match - "d" exactly, or ".d" for a longer name ending in
 * it. hamr_strncaseeq folds ASCII only, so a U-label matches only octet for
 * octet: no IDNA, no Unicode case folding.
 */
int smtp_addr_domain_match(const char *domain, size_t len, const char *pattern)
{
    size_t plen = strlen(pattern);

    if (plen == 0)
        return SMTP_ADDR_MATCH_NONE;
    if (len == plen && hamr_strncaseeq(domain, pattern, plen))
        return SMTP_ADDR_MATCH_EXACT;
    if (pattern[0] == '.' && len > plen && hamr_strncaseeq(domain + len - plen, pattern, plen))
        return SMTP_ADDR_MATCH_SUFFIX;
    return SMTP_ADDR_MATCH_NONE;
}
