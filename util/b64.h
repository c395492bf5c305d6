/* b64.h - standard base64 (RFC 4648 section 4), strict on input, for SMTP AUTH both ways. */
#ifndef HAMR_UTIL_B64_H
#define HAMR_UTIL_B64_H

#include <stddef.h>
#include <stdint.h>

/* b64_encoded_len - the octets b64_encode writes for len octets, without the NUL. */
static inline size_t b64_encoded_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

/*
 * b64_decode - strict standard base64 (with padding, no white space, the
 * bits under the padding zero) of in[0..len) into out (room for outlen).
 * The decoded length goes to *n. HAMR_EINVAL for anything malformed,
 * HAMR_ETOOBIG if out is too small. Safe on any untrusted input.
 */
int b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen, size_t *n);

/*
 * b64_encode - standard base64 of in[0..len) into out, with padding and
 * NUL-terminated. HAMR_ETOOBIG if out (outlen) is too small.
 */
int b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen);

#endif
