/* common.c - assertion failure and small string helpers. */
#include <stdio.h>
#include <stdlib.h>

#include "util/common.h"

void hamr_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "hamr: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

size_t hamr_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size > 0) {
        size_t c = n < size - 1 ? n : size - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

int hamr_strncaseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return 0;
        if (x == '\0')
            return 1;
    }
    return 1;
}
