/*
 * smtpd_rcptmap.c - the relay recipient map (Postfix relay_recipient_maps).
 *
 * With [smtpd] relay_recipients set, a recipient that a client outside
 * relay_networks (and not authenticated) sends to one of our relay domains
 * must be listed here, or RCPT gets 550 5.1.1 User unknown. Refusing at
 * RCPT time means we seldom accept mail that the inner servers would
 * refuse after us and that we would then have to bounce to a forged sender
 * (backscatter, SECURITY.md S20; Postfix BACKSCATTER_README).
 *
 * Owns: a copy of the file's path and the current table: every entry in
 * lower case, NUL-terminated, one after another in one array, plus an
 * open-addressing hash index (linear probing, at most half full) of
 * offsets into it. A lookup hashes the address once and usually touches one
 * slot; it allocates nothing. A reload builds a whole new table and swaps it
 * in only when the file was read without error.
 *
 * SMTPUTF8 recipients (RFC 6531) are entries like any other: an entry may
 * hold well-formed UTF-8 in its local part and U-labels in its domain.
 * Case is folded for ASCII letters only (smtp_addr_lower never touches an
 * octet >= 0x80), so UTF-8 compares octet for octet; a U-label never
 * matches its A-label form (no IDNA): list both if clients use both.
 *
 * Errors: loading names the file and the line ("PATH:LINE: reason", LINE 0
 * for the whole file); a lookup answers 0 (listed) or HAMR_ENOTFOUND.
 *
 * Security: the file is operator input, but it is bounded (file size,
 * line length, entry count) and every entry is checked. Lookups take
 * addresses from the network: the key is built in a fixed buffer, anything
 * too long is simply not found. The index holds only operator entries, so
 * a client cannot lengthen the probe sequences it causes.
 *
 * Threads: tables are reference-counted (atomically), as the credentials
 * table of smtpd_auth.c is. Loading, reloading and freeing the map stay on
 * one thread (the loop's); a held table may be read anywhere.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "util/log.h"
#include "net/smtp_addr.h"
#include "net/smtp_ext.h"
#include "net/smtpd_rcptmap.h"

/* smtpd_rcptmap_slot - one place in the index: an entry's offset + 1 (0: empty) and its hash. */
struct smtpd_rcptmap_slot {
    uint32_t off;
    uint32_t hash;
};

/* smtpd_rcptmap_table - everything one read of the file produced. */
struct smtpd_rcptmap_table {
    atomic_uint refs; /* the owning smtpd_rcptmap, plus one per holder */
    char *keys;       /* the entries, lower case, each NUL-terminated */
    size_t keys_len, keys_cap;
    size_t lines; /* entry lines read, duplicates included */
    struct smtpd_rcptmap_slot *slots;
    size_t mask; /* slots - 1; the slot count is a power of two */
    size_t n;    /* distinct entries */
};

struct smtpd_rcptmap {
    char path[4096];
    struct smtpd_rcptmap_table *table; /* the current table; never NULL */
};

/* ------------------------------------------------------------------ */
/* The table                                                            */
/* ------------------------------------------------------------------ */

/* smtpd_rcptmap_hash - FNV-1a over len octets, folded to 32 bits. */
static uint32_t smtpd_rcptmap_hash(const char *key, size_t len)
{
    uint64_t h = hash_fnv1a64(key, len, 0);
    return (uint32_t)(h ^ (h >> 32));
}

/* smtpd_rcptmap_probe - the slot of key (len octets, lower case), or the empty one ending the
 * probe. */
static size_t smtpd_rcptmap_probe(const struct smtpd_rcptmap_table *t,
                                  const char *key,
                                  size_t len,
                                  uint32_t hash)
{
    size_t i = hash & t->mask;
    for (;;) {
        const struct smtpd_rcptmap_slot *s = &t->slots[i];
        if (s->off == 0)
            return i;
        const char *k = t->keys + s->off - 1;
        if (s->hash == hash && memcmp(k, key, len) == 0 && k[len] == '\0')
            return i;
        i = (i + 1) & t->mask; /* never full: at most half the slots are used */
    }
}

/* smtpd_rcptmap_table_new - an empty table on the heap with one reference, or NULL. */
static struct smtpd_rcptmap_table *smtpd_rcptmap_table_new(void)
{
    struct smtpd_rcptmap_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    atomic_init(&t->refs, 1);
    return t;
}

/* smtpd_rcptmap_table_get - one more reference to the current table. */
struct smtpd_rcptmap_table *smtpd_rcptmap_table_get(const struct smtpd_rcptmap *m)
{
    atomic_fetch_add(&m->table->refs, 1);
    return m->table;
}

/* smtpd_rcptmap_table_put - drop a reference; the last one frees the table. */
void smtpd_rcptmap_table_put(struct smtpd_rcptmap_table *t)
{
    if (t == NULL)
        return;
    if (atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    free(t->keys);
    free(t->slots);
    free(t);
}

/* smtpd_rcptmap_table_append - entry (len octets), lower-cased, after the keys. HAMR_ENOMEM. */
static int smtpd_rcptmap_table_append(struct smtpd_rcptmap_table *t, const char *entry, size_t len)
{
    if (t->keys_len + len + 1 > t->keys_cap) {
        /* The keys never outgrow the file (plus a NUL), which is bounded. */
        size_t most = (size_t)SMTPD_RCPTMAP_FILE_MAX + 1;
        HAMR_ASSERT(t->keys_len + len + 1 <= most);
        size_t cap = t->keys_cap ? t->keys_cap * 2 : 4096;
        while (cap < t->keys_len + len + 1)
            cap *= 2;
        if (cap > most)
            cap = most;
        char *p = realloc(t->keys, cap);
        if (p == NULL)
            return HAMR_ENOMEM;
        t->keys = p;
        t->keys_cap = cap;
    }
    memcpy(t->keys + t->keys_len, entry, len);
    smtp_addr_lower(t->keys + t->keys_len, len);
    t->keys[t->keys_len + len] = '\0';
    t->keys_len += len + 1;
    return 0;
}

/* smtpd_rcptmap_table_index - build the hash index over keys, dropping duplicates. HAMR_ENOMEM. */
static int smtpd_rcptmap_table_index(struct smtpd_rcptmap_table *t)
{
    size_t nslots = 16;
    while (nslots < 2 * t->lines)
        nslots *= 2;
    t->slots = calloc(nslots, sizeof(*t->slots));
    if (t->slots == NULL)
        return HAMR_ENOMEM;
    t->mask = nslots - 1;
    t->n = 0;
    for (size_t off = 0; off < t->keys_len;) {
        const char *k = t->keys + off;
        size_t len = strlen(k);
        uint32_t hash = smtpd_rcptmap_hash(k, len);
        struct smtpd_rcptmap_slot *s = &t->slots[smtpd_rcptmap_probe(t, k, len, hash)];
        if (s->off == 0) {
            s->off = (uint32_t)off + 1;
            s->hash = hash;
            t->n++;
        }
        off += len + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The file                                                             */
/* ------------------------------------------------------------------ */

/*
 * smtpd_rcptmap_check_entry - is e[0..len) (no leading or trailing white
 * space; may hold any octet, NUL included) a valid entry? NULL, or the
 * reason for the error message.
 */
static const char *smtpd_rcptmap_check_entry(const char *e, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)e[i];
        if (c < 0x20 || c == 0x7f)
            return "control character in entry";
        if (c == ' ')
            return "space in entry (one address per line)";
    }
    /* RFC 6531 addresses: UTF-8, well-formed, and no C1 control either. */
    if (!smtp_utf8_valid(e, len))
        return "non-ASCII octets that are not UTF-8 in entry";
    if (len > SMTPD_RCPTMAP_ENTRY_MAX)
        return "entry longer than 254 octets";
    const char *at = memchr(e, '@', len);
    if (at == NULL)
        return "no @ in entry (want user@domain or @domain)";
    size_t local_len = (size_t)(at - e);
    const char *domain = at + 1;
    size_t domain_len = len - local_len - 1;
    if (memchr(domain, '@', domain_len) != NULL)
        return "more than one @ in entry";
    if (local_len > SMTPD_RCPTMAP_LOCAL_MAX)
        return "local part longer than 64 octets";
    if (local_len > 0 && !smtp_addr_dot_string_ok(e, local_len, SMTP_ADDR_LOCAL_UTF8))
        return "bad local part (want a dot-atom, RFC 5322 3.2.3)";
    if (domain_len == 0)
        return "no domain after @";
    if (!smtp_addr_domain_ok(domain, domain_len, SMTP_ADDR_DOM_TABLE | SMTP_ADDR_DOM_UTF8))
        return "bad domain (want letters, digits, '-' and dots)";
    return NULL;
}

/*
 * smtpd_rcptmap_read_line - the next line of f into line (room for
 * SMTPD_RCPTMAP_LINE_MAX octets, no terminator written), its length to
 * *len, adding what was read to *total. 1: a line; 0: end of file;
 * HAMR_ETOOBIG: the line is too long; HAMR_EINVAL: the file is too big.
 * Reads octet by octet so that a NUL inside a line is seen.
 */
static int smtpd_rcptmap_read_line(FILE *f, char *line, size_t *len, size_t *total)
{
    size_t n = 0;
    int c;

    while ((c = getc_unlocked(f)) != EOF) {
        if (++*total > SMTPD_RCPTMAP_FILE_MAX)
            return HAMR_EINVAL;
        if (c == '\n')
            break;
        if (n == SMTPD_RCPTMAP_LINE_MAX)
            return HAMR_ETOOBIG;
        line[n++] = (char)c;
    }
    *len = n;
    return c == EOF && n == 0 ? 0 : 1;
}

/*
 * smtpd_rcptmap_load - read path into t (empty on entry). On error the
 * caller puts t; errmsg holds "PATH:LINE: reason".
 */
static int smtpd_rcptmap_load(const char *path,
                              struct smtpd_rcptmap_table *t,
                              char *errmsg,
                              size_t errlen)
{
    char line[SMTPD_RCPTMAP_LINE_MAX];
    unsigned lineno = 0;
    size_t total = 0, len = 0;
    struct stat st;
    int rc;

    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int e = errno;
        snprintf(errmsg, errlen, "%s:0: %s", path, strerror(e));
        return HAMR_EIO;
    }
    /* A regular file is measured before it is read; anything else as it is read. */
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size > SMTPD_RCPTMAP_FILE_MAX) {
        snprintf(errmsg, errlen, "%s:0: file larger than 64 MiB", path);
        fclose(f);
        return HAMR_EINVAL;
    }
    while ((rc = smtpd_rcptmap_read_line(f, line, &len, &total)) == 1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            len--;
        size_t start = 0;
        while (start < len && (line[start] == ' ' || line[start] == '\t'))
            start++;
        if (start == len || line[start] == '#')
            continue;
        if (start != 0) {
            snprintf(errmsg, errlen, "%s:%u: line starts with white space", path, lineno);
            rc = HAMR_EINVAL;
            break;
        }
        const char *why = smtpd_rcptmap_check_entry(line, len);
        if (why != NULL) {
            snprintf(errmsg, errlen, "%s:%u: %s", path, lineno, why);
            rc = HAMR_EINVAL;
            break;
        }
        if (t->lines >= SMTPD_RCPTMAP_ENTRIES_MAX) {
            snprintf(errmsg, errlen, "%s:%u: more than %d entries", path, lineno,
                     SMTPD_RCPTMAP_ENTRIES_MAX);
            rc = HAMR_EINVAL;
            break;
        }
        rc = smtpd_rcptmap_table_append(t, line, len);
        if (rc != 0) {
            snprintf(errmsg, errlen, "%s:%u: out of memory", path, lineno);
            break;
        }
        t->lines++;
    }
    if (rc == HAMR_ETOOBIG) {
        snprintf(errmsg, errlen, "%s:%u: line longer than %d octets", path, lineno + 1,
                 SMTPD_RCPTMAP_LINE_MAX);
        rc = HAMR_EINVAL;
    } else if (rc == HAMR_EINVAL && total > SMTPD_RCPTMAP_FILE_MAX) {
        snprintf(errmsg, errlen, "%s:0: file larger than 64 MiB", path);
    }
    if (rc == 0 && ferror(f)) {
        snprintf(errmsg, errlen, "%s:%u: read error", path, lineno);
        rc = HAMR_EIO;
    }
    fclose(f);
    if (rc != 0)
        return rc;
    rc = smtpd_rcptmap_table_index(t);
    if (rc != 0)
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
    return rc;
}

/* ------------------------------------------------------------------ */
/* The map                                                              */
/* ------------------------------------------------------------------ */

/* smtpd_rcptmap_read - a new table from path, or an error (as smtpd_rcptmap_new). */
static int smtpd_rcptmap_read(const char *path,
                              struct smtpd_rcptmap_table **out,
                              char *errmsg,
                              size_t errlen)
{
    struct smtpd_rcptmap_table *t = smtpd_rcptmap_table_new();
    if (t == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
        return HAMR_ENOMEM;
    }
    int rc = smtpd_rcptmap_load(path, t, errmsg, errlen);
    if (rc != 0) {
        smtpd_rcptmap_table_put(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* smtpd_rcptmap_new - load path into a new map. */
int smtpd_rcptmap_new(const char *path, struct smtpd_rcptmap **out, char *errmsg, size_t errlen)
{
    struct smtpd_rcptmap *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
        return HAMR_ENOMEM;
    }
    if (hamr_strlcpy(m->path, path, sizeof(m->path)) >= sizeof(m->path)) {
        snprintf(errmsg, errlen, "relay_recipients: path too long");
        free(m);
        return HAMR_EINVAL;
    }
    int rc = smtpd_rcptmap_read(m->path, &m->table, errmsg, errlen);
    if (rc != 0) {
        free(m);
        return rc;
    }
    log_info("smtpd rcptmap file=%s entries=%zu", m->path, m->table->n);
    *out = m;
    return 0;
}

/* smtpd_rcptmap_reload - swap in a fresh read, or keep the old table. */
int smtpd_rcptmap_reload(struct smtpd_rcptmap *m, char *errmsg, size_t errlen)
{
    struct smtpd_rcptmap_table *t;
    int rc = smtpd_rcptmap_read(m->path, &t, errmsg, errlen);
    if (rc != 0) {
        log_warn("smtpd rcptmap reload failed, old map stays: %s", errmsg);
        return rc;
    }
    smtpd_rcptmap_table_put(m->table); /* holders keep the old one alive */
    m->table = t;
    log_info("smtpd rcptmap reloaded file=%s entries=%zu", m->path, m->table->n);
    return 0;
}

/* smtpd_rcptmap_free - release the map and its reference to the table. */
struct smtpd_rcptmap *smtpd_rcptmap_free(struct smtpd_rcptmap *m)
{
    if (m == NULL)
        return NULL;
    smtpd_rcptmap_table_put(m->table);
    free(m);
    return NULL;
}

/* smtpd_rcptmap_entries - the current table's size. */
size_t smtpd_rcptmap_entries(const struct smtpd_rcptmap *m)
{
    return m->table->n;
}

/* ------------------------------------------------------------------ */
/* Lookups                                                              */
/* ------------------------------------------------------------------ */

/* smtpd_rcptmap_table_has - is key (len octets, lower case) an entry? */
static bool smtpd_rcptmap_table_has(const struct smtpd_rcptmap_table *t,
                                    const char *key,
                                    size_t len)
{
    return t->slots[smtpd_rcptmap_probe(t, key, len, smtpd_rcptmap_hash(key, len))].off != 0;
}

/* smtpd_rcptmap_table_lookup - the address, then its "@domain". */
int smtpd_rcptmap_table_lookup(const struct smtpd_rcptmap_table *t, const char *addr)
{
    char key[SMTPD_RCPTMAP_ENTRY_MAX + 1];
    size_t len, at;

    if (!smtp_addr_key(addr, key, sizeof(key), &len, &at))
        return HAMR_ENOTFOUND;
    if (smtpd_rcptmap_table_has(t, key, len) || smtpd_rcptmap_table_has(t, key + at, len - at))
        return 0;
    return HAMR_ENOTFOUND;
}

/* smtpd_rcptmap_lookup - look up in the current table. */
int smtpd_rcptmap_lookup(const struct smtpd_rcptmap *m, const char *addr)
{
    return smtpd_rcptmap_table_lookup(m->table, addr);
}
