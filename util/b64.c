/*
 * b64.c - standard base64 (RFC 4648 section 4).
 *
 * Owns nothing; exports b64_encode and b64_decode. Errors: HAMR_EINVAL for
 * malformed input, HAMR_ETOOBIG for a short output buffer. Security: the
 * decoder reads untrusted input (SMTP AUTH responses) and is strict: groups
 * of four, '=' only at the very end, no white space, canonical padding bits.
 */
#include <stddef.h>
#include <stdint.h>

#include "util/b64.h"
#include "util/common.h"
#include "util/err.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* b64_value - the 6-bit value of c, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* b64_decode - strict decode: groups of 4, '=' only at the very end. */
int b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen, size_t *n)
{
    size_t o = 0;

    *n = 0;
    if (len % 4 != 0)
        return HAMR_EINVAL;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        size_t pad = 0;
        for (size_t j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)in[i + j];
            if (c == '=' && i + 4 == len && j >= 2) {
                v[j] = 0;
                pad++;
                continue;
            }
            if (pad > 0) /* a character after '=' */
                return HAMR_EINVAL;
            v[j] = b64_value(c);
            if (v[j] < 0)
                return HAMR_EINVAL;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t take = 3 - pad;
        /* Non-canonical: bits under the padding must be zero. */
        if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
            return HAMR_EINVAL;
        if (o + take > outlen)
            return HAMR_ETOOBIG;
        out[o++] = (uint8_t)(w >> 16);
        if (take > 1)
            out[o++] = (uint8_t)(w >> 8);
        if (take > 2)
            out[o++] = (uint8_t)w;
    }
    *n = o;
    return 0;
}

/* b64_encode - encode with padding, NUL-terminated. */
int b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen)
{
    size_t o = 0;

    if (b64_encoded_len(len) + 1 > outlen)
        return HAMR_ETOOBIG;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            w |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            w |= in[i + 2];
        out[o++] = b64_alphabet[(w >> 18) & 63];
        out[o++] = b64_alphabet[(w >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(w >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[w & 63] : '=';
    }
    out[o] = '\0';
    return 0;
}
