/* utf8.h - the UTF-8 checks the SMTP session and the queue share. Pure. */
#ifndef HAMR_UTIL_UTF8_H
#define HAMR_UTIL_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/*
 * utf8_valid - s (n octets) is well-formed UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF) with no C0 or C1 control
 * character and no DEL.
 */
bool utf8_valid(const char *s, size_t n);

/* utf8_ascii - no octet of s (n octets) is above 0x7f. */
bool utf8_ascii(const char *s, size_t n);

#endif
