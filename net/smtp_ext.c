/*
 * smtp_ext.c - xtext, NOTIFY, ORCPT and UTF-8 checks for the envelope
 * extensions (see smtp_ext.h). Pure.
 *
 * Security: every value comes from an SMTP client or from the replicated
 * log; each function bounds its output and refuses what it cannot
 * represent, so a decoded text never holds a NUL, a CR or an LF.
 */
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/utf8.h"
#include "net/smtp_ext.h"

/* smtp_ext_hex - the value of an upper-case hex digit, -1 for anything else. */
static int smtp_ext_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* smtp_xtext_decode - see smtp_ext.h. */
bool smtp_xtext_decode(const char *in, size_t inlen, char *out, size_t outlen, size_t *outn)
{
    size_t j = 0;
    if (outlen == 0)
        return false;
    out[0] = '\0';
    for (size_t i = 0; i < inlen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '+') {
            if (i + 2 >= inlen)
                return false;
            int hi = smtp_ext_hex(in[i + 1]), lo = smtp_ext_hex(in[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (unsigned char)(hi * 16 + lo);
            if (c == '\0')
                return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
        if (j + 1 >= outlen)
            return false;
        out[j++] = (char)c;
    }
    out[j] = '\0';
    if (outn != NULL)
        *outn = j;
    return true;
}

/* smtp_xtext_encode - see smtp_ext.h. */
bool smtp_xtext_encode(const char *in, size_t inlen, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;
    if (outlen == 0)
        return false;
    for (size_t i = 0; i < inlen; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 33 && c <= 126 && c != '+' && c != '=';
        size_t need = plain ? 1 : 3;
        if (j + need >= outlen) {
            out[0] = '\0';
            return false;
        }
        if (plain) {
            out[j++] = (char)c;
        } else {
            out[j++] = '+';
            out[j++] = hex[c >> 4];
            out[j++] = hex[c & 15];
        }
    }
    out[j] = '\0';
    return true;
}

/* The NOTIFY keywords, in the order smtp_notify_format writes them. */
static const struct {
    const char *word;
    uint8_t bit;
} smtp_notify_words[] = {
    {"NEVER", SMTP_NOTIFY_NEVER},
    {"SUCCESS", SMTP_NOTIFY_SUCCESS},
    {"FAILURE", SMTP_NOTIFY_FAILURE},
    {"DELAY", SMTP_NOTIFY_DELAY},
};

/* smtp_notify_parse - see smtp_ext.h. */
bool smtp_notify_parse(const char *v, uint8_t *bits)
{
    uint8_t got = 0;
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        uint8_t bit = 0;
        for (size_t k = 0; k < HAMR_ARRAY_LEN(smtp_notify_words); k++) {
            const char *w = smtp_notify_words[k].word;
            if (n == strlen(w) && hamr_strncaseeq(p, w, n))
                bit = smtp_notify_words[k].bit;
        }
        if (bit == 0 || (got & bit) != 0)
            return false;
        got |= bit;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if ((got & SMTP_NOTIFY_NEVER) != 0 && got != SMTP_NOTIFY_NEVER)
        return false;
    *bits = got;
    return true;
}

/* smtp_notify_format - see smtp_ext.h. */
void smtp_notify_format(uint8_t bits, char *out, size_t outlen)
{
    size_t j = 0;
    if (outlen == 0)
        return;
    out[0] = '\0';
    for (size_t k = 0; k < HAMR_ARRAY_LEN(smtp_notify_words); k++) {
        if ((bits & smtp_notify_words[k].bit) == 0)
            continue;
        int n = snprintf(out + j, outlen - j, "%s%s", j > 0 ? "," : "", smtp_notify_words[k].word);
        if (n < 0 || (size_t)n >= outlen - j) {
            out[j] = '\0';
            return;
        }
        j += (size_t)n;
    }
}

/* smtp_envid_ok - see smtp_ext.h. */
bool smtp_envid_ok(const char *s, size_t n)
{
    if (n == 0 || n > SMTP_ENVID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 32 || (unsigned char)s[i] > 126)
            return false;
    return true;
}

/* smtp_is_ascii - see smtp_ext.h. */
bool smtp_is_ascii(const char *s, size_t n)
{
    return utf8_ascii(s, n);
}

/* smtp_utf8_valid - see smtp_ext.h. */
bool smtp_utf8_valid(const char *s, size_t n)
{
    return utf8_valid(s, n);
}

/*
 * smtp_ext_utf8_addr_ok - a[0..n) is utf-8-addr-unitext (RFC 6533 3):
 * well-formed UTF-8 without controls (smtp_utf8_valid) whose ASCII octets
 * are QCHAR ('!' to '~' but '+', '=' and '\'), or a '\' that starts an
 * EmbeddedUnicodeChar "\x{HEXPOINT}" (here 2 to 6 upper-case hex digits).
 * '+' and '=' would read as xtext and break the parameter on the way out.
 */
static bool smtp_ext_utf8_addr_ok(const char *a, size_t n)
{
    if (n == 0 || !smtp_utf8_valid(a, n))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c == ' ' || c == '+' || c == '=')
            return false;
        if (c != '\\')
            continue;
        size_t j = i + 3, digits = 0;
        if (n - i < 3 || a[i + 1] != 'x' || a[i + 2] != '{')
            return false;
        while (j < n && digits < 6 && smtp_ext_hex(a[j]) >= 0)
            j++, digits++;
        if (digits < 2 || j == n || a[j] != '}')
            return false;
        i = j;
    }
    return true;
}

/* smtp_orcpt_parse - see smtp_ext.h. */
bool smtp_orcpt_parse(const char *v, char out[SMTP_ORCPT_MAX + 1])
{
    const char *semi = strchr(v, ';');
    if (semi == NULL || semi == v || (size_t)(semi - v) > 32)
        return false;
    size_t tlen = (size_t)(semi - v);
    for (size_t i = 0; i < tlen; i++) {
        char c = v[i];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        if (!ok)
            return false;
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    out[tlen] = ';';
    bool utf8 = tlen == 5 && memcmp(out, "utf-8", 5) == 0;
    size_t n;
    const char *a = semi + 1;
    size_t alen = strlen(a);
    if (utf8) {
        /* RFC 6533 3: utf-8-addr-unitext carries UTF-8 itself; kept as given. */
        if (alen > SMTP_ORCPT_MAX - tlen - 1 || !smtp_ext_utf8_addr_ok(a, alen))
            return false;
        memcpy(out + tlen + 1, a, alen + 1);
        return true;
    }
    if (!smtp_xtext_decode(a, alen, out + tlen + 1, SMTP_ORCPT_MAX - tlen, &n) || n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[tlen + 1 + i];
        if (c < 32 || c > 126)
            return false;
    }
    return true;
}

/* smtp_orcpt_format - see smtp_ext.h. */
bool smtp_orcpt_format(const char *orcpt, char *out, size_t outlen)
{
    const char *semi = strchr(orcpt, ';');
    if (semi == NULL)
        return false;
    size_t tlen = (size_t)(semi - orcpt) + 1;
    if (tlen >= outlen)
        return false;
    memcpy(out, orcpt, tlen);
    if (tlen == 6 && memcmp(orcpt, "utf-8;", 6) == 0) {
        size_t alen = strlen(semi + 1);
        if (tlen + alen >= outlen)
            return false;
        memcpy(out + tlen, semi + 1, alen + 1);
        return true;
    }
    return smtp_xtext_encode(semi + 1, strlen(semi + 1), out + tlen, outlen - tlen);
}
