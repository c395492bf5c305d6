/*
 * hostname.h - the syntax of a host name as RFC 5321's Domain writes it
 * (sub-domain = Let-dig [Ldh-str]): labels of 1 to 63 ASCII letters,
 * digits and '-', neither first nor last a '-', joined by '.', no
 * trailing dot. Shared by the MTA-STS policy parser (net/) and the
 * replicated policy cache (queue/), which must agree on it and may not
 * include each other. Locale-free; header-only.
 */
#ifndef HAMR_UTIL_HOSTNAME_H
#define HAMR_UTIL_HOSTNAME_H

#include <stdbool.h>
#include <stddef.h>

/* hostname_alnum - an ASCII letter or digit, whatever the locale. */
static inline bool hostname_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* hostname_ok - p[0..n) is a host name of at most max octets (see above). */
static inline bool hostname_ok(const char *p, size_t n, size_t max)
{
    size_t label = 0;
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '.') {
            if (label == 0 || p[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (c == '-') {
            if (label == 0)
                return false;
        } else if (!hostname_alnum(c)) {
            return false;
        }
        if (++label > 63)
            return false;
    }
    return label > 0 && p[n - 1] != '-';
}

#endif
