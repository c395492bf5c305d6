/* proto_frame.c - magic, version and kind checks around protobuf-c. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>

#include "proto/proto_frame.h"
#include "util/err.h"

static const uint8_t proto_entry_magic[4] = {'H', 'A', 'M', 'R'};
static const uint8_t proto_snapshot_magic[4] = {'H', 'M', 'S', 'N'};
static const uint8_t proto_snapz_magic[4] = {'H', 'M', 'S', 'Z'};

static int proto_pack_magic(const ProtobufCMessage *m,
                            const uint8_t magic[4],
                            void *(*alloc)(size_t),
                            uint8_t **out,
                            size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = (alloc ? alloc : malloc)(n + 4);
    if (p == NULL)
        return HAMR_ENOMEM;
    memcpy(p, magic, 4);
    protobuf_c_message_pack(m, p + 4);
    *out = p;
    *len = n + 4;
    return 0;
}

int proto_entry_pack(Hamr__Entry *e, void *(*alloc)(size_t), uint8_t **out, size_t *len)
{
    e->format_version = PROTO_FORMAT_VERSION;
    size_t n = protobuf_c_message_get_packed_size(&e->base);
    if (n > UINT32_MAX - 16)
        return HAMR_ETOOBIG;
    size_t total = (8 + n + PROTO_ENTRY_ALIGN - 1) / PROTO_ENTRY_ALIGN * PROTO_ENTRY_ALIGN;
    uint8_t *p = (alloc ? alloc : malloc)(total);
    if (p == NULL)
        return HAMR_ENOMEM;
    memcpy(p, proto_entry_magic, 4);
    proto_u32_put(p + 4, (uint32_t)n);
    protobuf_c_message_pack(&e->base, p + 8);
    memset(p + 8 + n, 0, total - 8 - n);
    *out = p;
    *len = total;
    return 0;
}

int proto_entry_unpack(const uint8_t *buf, size_t len, Hamr__Entry **out)
{
    if (len < 8 || len % PROTO_ENTRY_ALIGN != 0 || memcmp(buf, proto_entry_magic, 4) != 0)
        return HAMR_ECORRUPT;
    uint32_t n = proto_u32_get(buf + 4);
    if (n > len - 8 || len - 8 - n >= PROTO_ENTRY_ALIGN)
        return HAMR_ECORRUPT;
    for (size_t i = 8 + n; i < len; i++)
        if (buf[i] != 0)
            return HAMR_ECORRUPT;
    Hamr__Entry *e = hamr__entry__unpack(NULL, n, buf + 8);
    if (e == NULL)
        return HAMR_ECORRUPT;
    if (e->format_version == 0 || e->format_version > PROTO_FORMAT_VERSION_MAX) {
        hamr__entry__free_unpacked(e, NULL);
        return HAMR_EVERSION;
    }
    switch (e->cmd_case) {
        case HAMR__ENTRY__CMD_ENQUEUE:
        case HAMR__ENTRY__CMD_OUTCOME:
        case HAMR__ENTRY__CMD_LEASE:
        case HAMR__ENTRY__CMD_ADMIN:
        case HAMR__ENTRY__CMD_NODE_INFO:
        case HAMR__ENTRY__CMD_CLUSTER_LEVEL:
            /*
             * The kinds of format 1. A kind added later goes here too, and the
             * leader proposes it only once ClusterLevel has reached its format.
             */
        case HAMR__ENTRY__CMD_STS_POLICY:
            /* Format 4 (QUEUE_LEVEL_STS): the replicated MTA-STS policy cache. */
        case HAMR__ENTRY__CMD_LEASE_RENEW:
            /* Format 6 (QUEUE_LEVEL_SPREAD): a holder's leases extended. */
            break;
        default:
            /* Unknown kind (a newer writer, or none at all): refuse, never skip. */
            hamr__entry__free_unpacked(e, NULL);
            return HAMR_EVERSION;
    }
    *out = e;
    return 0;
}

int proto_snapshot_pack(Hamr__Snapshot *s, void *(*alloc)(size_t), uint8_t **out, size_t *len)
{
    s->format_version = PROTO_SNAPSHOT_VERSION;
    return proto_pack_magic(&s->base, proto_snapshot_magic, alloc, out, len);
}

/* proto_snapz_sink - protobuf-c's output, staged a block at a time and LZ4'd into out. */
struct proto_snapz_sink {
    ProtobufCBuffer base;
    uint8_t *stage; /* PROTO_SNAPZ_BLOCK bytes */
    size_t staged;
    uint8_t *out; /* room for every block's bound */
    size_t used;
    size_t cap;
    bool ok;
};

/* proto_snapz_flush - the staged bytes as one block (length, then LZ4 block). */
static void proto_snapz_flush(struct proto_snapz_sink *z)
{
    if (!z->ok || z->staged == 0)
        return;
    int room = (int)(z->cap - z->used - 4 < (size_t)INT32_MAX ? z->cap - z->used - 4 : INT32_MAX);
    int c = LZ4_compress_default((const char *)z->stage, (char *)z->out + z->used + 4,
                                 (int)z->staged, room);
    if (c <= 0) {
        z->ok = false;
        return;
    }
    proto_u32_put(z->out + z->used, (uint32_t)c);
    z->used += 4 + (size_t)c;
    z->staged = 0;
}

/* proto_snapz_append - protobuf-c's append: stage, flushing each full block. */
static void proto_snapz_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    struct proto_snapz_sink *z = (struct proto_snapz_sink *)b;
    while (z->ok && len > 0) {
        size_t take = PROTO_SNAPZ_BLOCK - z->staged;
        if (take > len)
            take = len;
        memcpy(z->stage + z->staged, data, take);
        z->staged += take;
        data += take;
        len -= take;
        if (z->staged == PROTO_SNAPZ_BLOCK)
            proto_snapz_flush(z);
    }
}

int proto_snapshot_pack_z(Hamr__Snapshot *s, void *(*alloc)(size_t), uint8_t **out, size_t *len)
{
    s->format_version = PROTO_SNAPSHOT_VERSION;
    size_t n = protobuf_c_message_get_packed_size(&s->base);
    size_t blocks = n / PROTO_SNAPZ_BLOCK + 1;
    /* The blocks go to a malloc'd bound (its untouched pages cost nothing), then to
     * alloc's buffer of the right size, which this file cannot free on an error. */
    size_t cap = 12 + blocks * (4 + (size_t)LZ4_COMPRESSBOUND(PROTO_SNAPZ_BLOCK));
    struct proto_snapz_sink z = {.base = {.append = proto_snapz_append},
                                 .stage = malloc(PROTO_SNAPZ_BLOCK),
                                 .out = malloc(cap),
                                 .used = 12,
                                 .cap = cap,
                                 .ok = true};
    int rv = z.stage != NULL && z.out != NULL ? 0 : HAMR_ENOMEM;
    if (rv == 0) {
        memcpy(z.out, proto_snapz_magic, 4);
        proto_u32_put(z.out + 4, (uint32_t)((uint64_t)n >> 32));
        proto_u32_put(z.out + 8, (uint32_t)n);
        size_t packed = protobuf_c_message_pack_to_buffer(&s->base, &z.base);
        proto_snapz_flush(&z);
        rv = z.ok && packed == n ? 0 : HAMR_EINVAL;
    }
    uint8_t *p = rv == 0 ? (alloc ? alloc : malloc)(z.used) : NULL;
    if (rv == 0 && p == NULL)
        rv = HAMR_ENOMEM;
    if (rv == 0) {
        memcpy(p, z.out, z.used);
        *out = p;
        *len = z.used;
    }
    free(z.stage);
    free(z.out);
    return rv;
}

/*
 * proto_snapz_inflate - the protobuf of a compressed snapshot buffer into
 * *raw (malloc'd, *n bytes). HAMR_ECORRUPT, HAMR_ENOMEM.
 */
static int proto_snapz_inflate(const uint8_t *buf, size_t len, uint8_t **raw, size_t *n)
{
    if (len < 12)
        return HAMR_ECORRUPT;
    uint64_t want = ((uint64_t)proto_u32_get(buf + 4) << 32) | proto_u32_get(buf + 8);
    /* LZ4 gives at most 255 bytes for one of a block; anything more is not ours. */
    if (want > (uint64_t)(len - 12) * 255 || want > SIZE_MAX - 1)
        return HAMR_ECORRUPT;
    uint8_t *p = malloc(want > 0 ? (size_t)want : 1);
    if (p == NULL)
        return HAMR_ENOMEM;
    size_t in = 12, done = 0;
    while (in < len) {
        size_t c = len - in < 4 ? 0 : proto_u32_get(buf + in);
        size_t expect = want - done < PROTO_SNAPZ_BLOCK ? (size_t)(want - done) : PROTO_SNAPZ_BLOCK;
        if (c == 0 || c > len - in - 4 || c > (size_t)LZ4_COMPRESSBOUND(PROTO_SNAPZ_BLOCK) ||
            expect == 0 ||
            LZ4_decompress_safe((const char *)buf + in + 4, (char *)p + done, (int)c,
                                (int)expect) != (int)expect) {
            free(p);
            return HAMR_ECORRUPT;
        }
        in += 4 + c;
        done += expect;
    }
    if (done != want) {
        free(p);
        return HAMR_ECORRUPT;
    }
    *raw = p;
    *n = (size_t)want;
    return 0;
}

int proto_snapshot_unpack(const uint8_t *buf, size_t len, Hamr__Snapshot **out)
{
    Hamr__Snapshot *s = NULL;
    if (len >= 4 && memcmp(buf, proto_snapz_magic, 4) == 0) {
        uint8_t *raw = NULL;
        size_t n = 0;
        int rv = proto_snapz_inflate(buf, len, &raw, &n);
        if (rv != 0)
            return rv;
        s = hamr__snapshot__unpack(NULL, n, raw);
        free(raw);
    } else if (len >= 4 && memcmp(buf, proto_snapshot_magic, 4) == 0) {
        s = hamr__snapshot__unpack(NULL, len - 4, buf + 4);
    }
    if (s == NULL)
        return HAMR_ECORRUPT;
    if (s->format_version == 0 || s->format_version > PROTO_SNAPSHOT_VERSION) {
        hamr__snapshot__free_unpacked(s, NULL);
        return HAMR_EVERSION;
    }
    *out = s;
    return 0;
}

void proto_u32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint32_t proto_u32_get(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
