/*
 * hash.h - FNV-1a 64 (Fowler, Noll, Vo), the hash of hamr's in-memory tables.
 *
 * Used for bucket and probe positions only: no value is persisted, sent to
 * another node or compared across nodes, so the function may change without
 * a format version. Not a defence against chosen keys by itself: a table a
 * client can fill (net/smtpd_limits.c) passes a random seed.
 */
#ifndef HAMR_UTIL_HASH_H
#define HAMR_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The 64-bit offset basis and prime of FNV-1a. */
#define HASH_FNV1A64_BASIS 14695981039346656037ull
#define HASH_FNV1A64_PRIME 1099511628211ull

/* hash_fnv1a64_add - continue the FNV-1a 64 hash h over len octets of data. */
static inline uint64_t hash_fnv1a64_add(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= HASH_FNV1A64_PRIME;
    }
    return h;
}

/*
 * hash_fnv1a64 - FNV-1a 64 of len octets, starting from the offset basis
 * XORed with seed (0: plain FNV-1a 64).
 */
static inline uint64_t hash_fnv1a64(const void *data, size_t len, uint64_t seed)
{
    return hash_fnv1a64_add(HASH_FNV1A64_BASIS ^ seed, data, len);
}

/* hash_fnv1a64_str - FNV-1a 64 of a NUL-terminated string (without the NUL), no seed. */
static inline uint64_t hash_fnv1a64_str(const char *s)
{
    return hash_fnv1a64(s, strlen(s), 0);
}

#endif
