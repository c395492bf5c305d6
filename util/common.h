/* common.h - assertions that stay on, small helpers, poisoned unsafe calls. */
#ifndef HAMR_UTIL_COMMON_H
#define HAMR_UTIL_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* HAMR_ASSERT - invariant check, kept in release builds. Never for input. */
#define HAMR_ASSERT(cond)                                       \
    do {                                                        \
        if (!(cond))                                            \
            hamr_assert_fail(#cond, __FILE__, __LINE__);        \
    } while (0)

_Noreturn void hamr_assert_fail(const char *expr, const char *file, int line);

#define HAMR_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define hamr_container_of(ptr, type, member) \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* hamr_strlcpy - copy with truncation; returns strlen(src) like BSD strlcpy. */
size_t hamr_strlcpy(char *dst, const char *src, size_t size);

/* hamr_strcaseeq_n - ASCII case-insensitive compare of n bytes. */
int hamr_strncaseeq(const char *a, const char *b, size_t n);

/* Unsafe string calls break the build (explicit lengths only). */
#pragma GCC poison strcpy strcat sprintf gets vsprintf

#endif
