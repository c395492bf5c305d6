/*
 * fuzz_consensus_wire.c - libFuzzer target for consensus/consensus_wire, the
 * checker between the raft port and libraft 0.15 (SECURITY.md, raft port).
 *
 * Input: byte 0 picks how the stream is cut into reads; the rest is what a
 * stranger sends to the raft port (a handshake, then messages). The stream
 * is checked in one read, one octet per read and cut as byte 0 says.
 *
 * Properties checked:
 *   - the three feeds agree: verdict, reason, handshake, bytes let through;
 *   - feed never returns more than it was given, and a refusal is sticky;
 *   - whatever the checker lets through, libraft's own decoder
 *     (uvDecodeMessage, linked from Debian's libraft.a) takes without
 *     reading past a header: each header is placed flush against a
 *     PROT_NONE page, so an overread faults (libraft.a is not built with
 *     ASan). Where libraft accepts a header, its payload length is the one
 *     the checker framed (the next message starts where both say), and
 *     every entry libraft would place lies inside that payload.
 *
 * Seeds (corpus/consensus_wire/): a valid handshake followed by each message
 * type as libraft 0.15 encodes it (uv_encoding.c), and the packets of
 * RAFT.md 4.5 (AppendEntries headers claiming 1, 1000000 and 0xFFFFFFFF
 * entries; an address without its NUL).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <raft.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "consensus/consensus_wire.h"
#include "fuzz_common.h"

/* libraft 0.15, src/uv_encoding.h: internal, reached through the static archive. */
int uvDecodeMessage(uint16_t type,
                    const uv_buf_t *header,
                    struct raft_message *message,
                    size_t *payload_len);

static const struct consensus_wire_limits fuzz_limits = {
    .max_entry = 1u << 16,
    .max_message = 1u << 20,
    .max_entries = 1024,
};

/* fuzz_wire_out - what one feed let through. */
struct fuzz_wire_out {
    uint8_t *b;
    size_t len;
    size_t cap;
};

static void fuzz_wire_emit_cb(void *arg, const uint8_t *data, size_t len)
{
    struct fuzz_wire_out *o = arg;
    FUZZ_CHECK(o->len + len <= o->cap);
    memcpy(o->b + o->len, data, len);
    o->len += len;
}

/* fuzz_wire_run - one feed in reads of piece bytes (0: whole); returns the verdict. */
static int fuzz_wire_run(const uint8_t *p,
                         size_t n,
                         size_t piece,
                         struct fuzz_wire_out *o,
                         const char **why,
                         bool *handshaken)
{
    struct consensus_wire w;
    consensus_wire_init(&w, &fuzz_limits);
    size_t off = 0;
    int rv = 0;
    while (off < n && rv == 0) {
        size_t len = piece == 0 || piece > n - off ? n - off : piece;
        size_t done = 0;
        while (done < len) {
            ssize_t r = consensus_wire_feed(&w, p + off + done, len - done, fuzz_wire_emit_cb, o);
            if (r < 0) {
                rv = (int)r;
                break;
            }
            FUZZ_CHECK(r > 0 && (size_t)r <= len - done);
            done += (size_t)r;
        }
        off += len;
    }
    if (rv != 0) {
        size_t before = o->len;
        FUZZ_CHECK(consensus_wire_feed(&w, p, n, fuzz_wire_emit_cb, o) == rv);
        FUZZ_CHECK(o->len == before);
    }
    *why = w.why;
    *handshaken = consensus_wire_handshaken(&w);
    consensus_wire_free(&w);
    return rv;
}

/* fuzz_wire_guarded - a copy of n bytes ending at a PROT_NONE page; unmap with the size. */
static uint8_t *fuzz_wire_guarded(const uint8_t *p, size_t n, uint8_t **map, size_t *maplen)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (n + page - 1) / page;
    if (data_pages == 0)
        data_pages = 1;
    *maplen = (data_pages + 1) * page;
    *map = mmap(NULL, *maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    FUZZ_CHECK(*map != MAP_FAILED);
    FUZZ_CHECK(mprotect(*map + data_pages * page, page, PROT_NONE) == 0);
    uint8_t *at = *map + data_pages * page - n;
    memcpy(at, p, n);
    return at;
}

static uint64_t fuzz_wire_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* fuzz_wire_decode - libraft's decoder over every complete header let through. */
static void fuzz_wire_decode(const uint8_t *b, size_t n)
{
    size_t off = 0;
    while (n - off >= CONSENSUS_WIRE_PREAMBLE) {
        uint64_t type = fuzz_wire_get64(b + off);
        uint64_t h = fuzz_wire_get64(b + off + 8);
        /* The checker lets a preamble through only with its whole, judged header. */
        FUZZ_CHECK(type >= 1 && type <= 6);
        FUZZ_CHECK(h <= n - off - CONSENSUS_WIRE_PREAMBLE);
        uint8_t *map;
        size_t maplen;
        uint8_t *hdr =
            fuzz_wire_guarded(b + off + CONSENSUS_WIRE_PREAMBLE, (size_t)h, &map, &maplen);
        uv_buf_t buf = uv_buf_init((char *)hdr, (unsigned)h);
        struct raft_message m;
        size_t payload = 0;
        int rv = uvDecodeMessage((uint16_t)type, &buf, &m, &payload);
        munmap(map, maplen);
        if (rv != 0) {
            /* libraft refuses it too (duplicate members, say): it closes the connection. */
            if (type == RAFT_IO_INSTALL_SNAPSHOT)
                raft_configuration_close(&m.install_snapshot.conf);
            return;
        }
        if (type == RAFT_IO_APPEND_ENTRIES) {
            /* uvDecodeEntriesBatch pads each entry to 8: all must fit the payload. */
            size_t at = 0;
            for (unsigned i = 0; i < m.append_entries.n_entries; i++) {
                size_t len = m.append_entries.entries[i].buf.len;
                at += (len + 7) / 8 * 8;
            }
            FUZZ_CHECK(at == payload);
            raft_free(m.append_entries.entries);
        } else if (type == RAFT_IO_INSTALL_SNAPSHOT) {
            raft_configuration_close(&m.install_snapshot.conf);
        }
        off += CONSENSUS_WIRE_PREAMBLE + (size_t)h;
        if (payload >= n - off)
            return;
        off += payload;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        log_set_level(LOG_LEVEL_ERROR);
        quiet = true;
    }
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 17 + 1;
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    struct fuzz_wire_out out[3];
    const char *why[3];
    bool hs[3];
    int rv[3];
    static const size_t pieces_of[3] = {0, 1, 0};
    for (int i = 0; i < 3; i++) {
        out[i].cap = n;
        out[i].len = 0;
        out[i].b = malloc(n + 1);
        FUZZ_CHECK(out[i].b != NULL);
        rv[i] = fuzz_wire_run(p, n, i == 2 ? piece : pieces_of[i], &out[i], &why[i], &hs[i]);
    }
    for (int i = 1; i < 3; i++) {
        FUZZ_CHECK(rv[i] == rv[0]);
        FUZZ_CHECK(why[i] == why[0]);
        FUZZ_CHECK(hs[i] == hs[0]);
        FUZZ_CHECK(out[i].len == out[0].len);
        FUZZ_CHECK(memcmp(out[i].b, out[0].b, out[0].len) == 0);
    }
    FUZZ_CHECK(rv[0] == 0 || rv[0] == HAMR_EPROTO);
    FUZZ_CHECK(rv[0] == 0 || why[0] != NULL);
    fuzz_wire_decode(out[0].b, out[0].len);
    for (int i = 0; i < 3; i++)
        free(out[i].b);
    return 0;
}
