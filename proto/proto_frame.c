/* proto_frame.c - magic, version and kind checks around protobuf-c. */
#include <stdlib.h>
#include <string.h>

#include "proto/proto_frame.h"
#include "util/err.h"

static const uint8_t proto_entry_magic[4] = {'H', 'A', 'M', 'R'};
static const uint8_t proto_snapshot_magic[4] = {'H', 'M', 'S', 'N'};

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

int proto_snapshot_unpack(const uint8_t *buf, size_t len, Hamr__Snapshot **out)
{
    if (len < 4 || memcmp(buf, proto_snapshot_magic, 4) != 0)
        return HAMR_ECORRUPT;
    Hamr__Snapshot *s = hamr__snapshot__unpack(NULL, len - 4, buf + 4);
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
