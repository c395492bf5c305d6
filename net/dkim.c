/*
 * dkim.c - DKIM signing of outbound mail: relaxed/relaxed canonicalisation
 * (RFC 6376 3.4.2, 3.4.4), the body hash, the DKIM-Signature header with
 * rsa-sha256 (RFC 6376 3.3.1) or ed25519-sha256 (RFC 8463), and the table
 * of private keys named by [dkim] key lines.
 *
 * Why our own code: Debian 12 has no DKIM C library that fits. libopendkim
 * is built for its milter (it wants libbsd, its own I/O and DNS handling,
 * and an API shaped around the milter's callbacks); libdkim and others are
 * unmaintained. Signing needs little: two canonicalisations, SHA-256 and a
 * signature, all of which OpenSSL 3 (already linked for TLS) provides. The
 * canonicalisation and the header building are pure (no I/O, no clock: the
 * signing time comes in), so the unit tests and a fuzzer drive them
 * directly; only dkim_keys_* read files.
 *
 * Signing, as RFC 6376 5 describes it:
 *   1. bh= is SHA-256 of the relaxed body (dkim_body_*).
 *   2. h= lists the fields of dkim_sign_headers that the message has, each
 *      name once per instance (5.4.2: instances are taken from the bottom
 *      up; at most DKIM_INSTANCES_MAX of one name), "from" always, and once more with oversign_from
 * (a From: added later then breaks the signature, 5.4.2 and 8.15).
 *   3. The header hash input is each listed field in relaxed form with its
 *      CRLF, then this DKIM-Signature field itself with an empty b= and no
 *      CRLF (3.7). rsa-sha256 signs that input with RSASSA-PKCS1-v1_5 and
 *      SHA-256; ed25519-sha256 signs the SHA-256 hash of it with PureEdDSA
 *      Ed25519 (RFC 8463 3: "computes a message hash ... using SHA-256 as
 *      the hash-alg. It signs the hash with the PureEdDSA variant Ed25519").
 *   4. The header is folded at tag boundaries (and inside h= and b=, where
 *      the grammar allows FWS) so that every line is under 78 octets; b=
 *      comes last, so that the folding of everything the signature covers
 *      is fixed before the signature is made.
 *
 * Owns: struct dkim_keys (the specs, copied, and one EVP_PKEY per spec).
 * Errors: HAMR_EINVAL (input or key unusable), HAMR_EIO (a key file cannot
 * be read, OpenSSL failed), HAMR_ENOTFOUND (nothing to sign with),
 * HAMR_ENOMEM. OpenSSL's error queue is drained into the message or log at
 * the point of failure.
 *
 * Security: the message is untrusted network input. Parsing is bounded by
 * the message (already limited by message_size_limit and
 * header_size_limit), every scan checks its length, and nothing is
 * written outside the caller's bounded buffers. The key files are
 * operator input; the keys never leave this module.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/dkim.h"

#define DKIM_FOLD_WIDTH 76 /* octets a folded line may reach, CRLF not counted (< 78) */
#define DKIM_TAB_WIDTH 8   /* a continuation line's HTAB counted as this many */
#define DKIM_SIG_MAX 1024  /* signature octets: RSA up to 8192 bits */
#define DKIM_INPUT_LIMIT (64u << 20)

const char *const dkim_sign_headers[] = {"from",
                                         "reply-to",
                                         "subject",
                                         "date",
                                         "to",
                                         "cc",
                                         "resent-date",
                                         "resent-from",
                                         "resent-to",
                                         "resent-cc",
                                         "in-reply-to",
                                         "references",
                                         "list-id",
                                         "list-help",
                                         "list-unsubscribe",
                                         "list-subscribe",
                                         "list-post",
                                         "list-owner",
                                         "list-archive",
                                         "message-id",
                                         "mime-version",
                                         "content-type",
                                         "content-transfer-encoding",
                                         NULL};

/* dkim_alg_name - the a= value of alg. */
const char *dkim_alg_name(enum dkim_alg alg)
{
    return alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

/* dkim_openssl_errors - drain OpenSSL's error queue into out (one line). */
static const char *dkim_openssl_errors(char *out, size_t outlen)
{
    size_t n = 0;
    unsigned long e;
    out[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[160];
        ERR_error_string_n(e, one, sizeof(one));
        if (n + 1 < outlen) {
            int w = snprintf(out + n, outlen - n, "%s%s", n > 0 ? "; " : "", one);
            if (w > 0)
                n = (size_t)w < outlen - n ? n + (size_t)w : outlen - 1;
        }
    }
    if (n == 0)
        snprintf(out, outlen, "no OpenSSL error");
    return out;
}

static bool dkim_wsp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* ------------------------------------------------------------------------ */
/* Canonicalisation.                                                        */
/* ------------------------------------------------------------------------ */

int dkim_canon_header(const char *field, size_t len, bool crlf, struct buf *out)
{
    const char *colon = memchr(field, ':', len);
    if (colon == NULL)
        return HAMR_EINVAL;
    /* The name: WSP before the colon goes (3.4.2), the rest in lower case. */
    size_t nlen = (size_t)(colon - field);
    while (nlen > 0 && dkim_wsp((uint8_t)field[nlen - 1]))
        nlen--;
    char chunk[256];
    size_t c = 0;
    int rv = 0;
    for (size_t i = 0; i < nlen && rv == 0; i++) {
        char ch = field[i];
        chunk[c++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        if (c == sizeof(chunk)) {
            rv = buf_append(out, chunk, c);
            c = 0;
        }
    }
    if (rv == 0 && c > 0)
        rv = buf_append(out, chunk, c);
    if (rv == 0)
        rv = buf_append(out, ":", 1);
    /* The value: unfold (drop CRLF), runs of WSP as one SP, none at the ends. */
    const char *v = colon + 1;
    size_t vlen = len - (size_t)(v - field);
    if (vlen >= 2 && v[vlen - 2] == '\r' && v[vlen - 1] == '\n')
        vlen -= 2;
    bool wsp = false, any = false;
    c = 0;
    for (size_t i = 0; i < vlen && rv == 0; i++) {
        uint8_t ch = (uint8_t)v[i];
        if (ch == '\r' && i + 1 < vlen && v[i + 1] == '\n') {
            i++;
            continue;
        }
        if (dkim_wsp(ch)) {
            wsp = true;
            continue;
        }
        if (wsp && any)
            chunk[c++] = ' ';
        wsp = false;
        any = true;
        chunk[c++] = (char)ch;
        if (c >= sizeof(chunk) - 1) {
            rv = buf_append(out, chunk, c);
            c = 0;
        }
    }
    if (rv == 0 && c > 0)
        rv = buf_append(out, chunk, c);
    if (rv == 0 && crlf)
        rv = buf_append(out, "\r\n", 2);
    return rv;
}

/* dkim_body_put - one canonical octet into the output chunk. */
static void dkim_body_put(struct dkim_body *b, uint8_t c)
{
    if (b->n == sizeof(b->out)) {
        b->emit(b->arg, b->out, b->n);
        b->n = 0;
    }
    b->out[b->n++] = c;
}

/* dkim_body_content - a content octet: the held line ends and SP first. */
static void dkim_body_content(struct dkim_body *b, uint8_t c)
{
    for (; b->crlfs > 0; b->crlfs--) {
        dkim_body_put(b, '\r');
        dkim_body_put(b, '\n');
    }
    if (b->wsp)
        dkim_body_put(b, ' ');
    b->wsp = false;
    b->content = true;
    dkim_body_put(b, c);
}

void dkim_body_init(struct dkim_body *b, dkim_emit_cb emit, void *arg)
{
    memset(b, 0, sizeof(*b));
    b->emit = emit;
    b->arg = arg;
}

void dkim_body_update(struct dkim_body *b, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (b->cr) {
            b->cr = false;
            if (c == '\n') {
                /* A line end: its trailing WSP goes; held until content follows. */
                b->wsp = false;
                b->crlfs++;
                continue;
            }
            dkim_body_content(b, '\r'); /* a bare CR is content */
        }
        if (c == '\r')
            b->cr = true;
        else if (dkim_wsp(c))
            b->wsp = true;
        else
            dkim_body_content(b, c);
    }
}

void dkim_body_final(struct dkim_body *b)
{
    if (b->cr) {
        b->cr = false;
        dkim_body_content(b, '\r');
    }
    /* Empty lines at the end go; a body with content ends in one CRLF. */
    if (b->content) {
        dkim_body_put(b, '\r');
        dkim_body_put(b, '\n');
    }
    if (b->n > 0)
        b->emit(b->arg, b->out, b->n);
    b->n = 0;
}

/* dkim_body_sha - emit callback: into a SHA-256 context. */
static void dkim_body_sha(void *arg, const uint8_t *p, size_t n)
{
    EVP_DigestUpdate(arg, p, n);
}

/* dkim_body_hash - SHA-256 of the relaxed body of p[0..n) into hash. */
int dkim_body_hash(const uint8_t *p, size_t n, uint8_t hash[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return HAMR_ENOMEM;
    int rv = HAMR_EIO;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
        struct dkim_body b;
        dkim_body_init(&b, dkim_body_sha, ctx);
        dkim_body_update(&b, p, n);
        dkim_body_final(&b);
        unsigned int len = 0;
        if (EVP_DigestFinal_ex(ctx, hash, &len) == 1 && len == 32)
            rv = 0;
    }
    EVP_MD_CTX_free(ctx);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* The header fields of a message.                                          */
/* ------------------------------------------------------------------------ */

void dkim_split(const uint8_t *msg, size_t len, size_t *hdr_len, size_t *body_off)
{
    size_t pos = 0;
    while (pos < len) {
        if (pos + 1 < len && msg[pos] == '\r' && msg[pos + 1] == '\n') {
            *hdr_len = pos;
            *body_off = pos + 2;
            return;
        }
        /* The end of this line: the next CRLF. */
        const uint8_t *q = msg + pos;
        size_t left = len - pos;
        const uint8_t *e = NULL;
        while (left > 1) {
            const uint8_t *cr = memchr(q, '\r', left - 1);
            if (cr == NULL)
                break;
            if (cr[1] == '\n') {
                e = cr;
                break;
            }
            left -= (size_t)(cr + 1 - q);
            q = cr + 1;
        }
        if (e == NULL)
            break;
        pos = (size_t)(e - msg) + 2;
    }
    *hdr_len = len;
    *body_off = len;
}

/* dkim_field - one header field: where it starts, its length with its CRLF, its name's length. */
struct dkim_field {
    const char *p;
    size_t len;
    size_t name_len;
};

/*
 * dkim_fields - the header fields of hdr[0..len) into a malloc'd array
 * (*out, *n). A field is a line not starting with SP/HTAB plus the lines
 * that do; a line without a ':' before any WSP is no field and is skipped.
 * 0 or HAMR_ENOMEM.
 */
static int dkim_fields(const uint8_t *hdr, size_t len, struct dkim_field **out, size_t *n)
{
    struct buf fb;
    buf_init(&fb, 0);
    size_t pos = 0;
    int rv = 0;
    while (pos < len && rv == 0) {
        size_t start = pos;
        /* Lines until one that does not continue this field. */
        do {
            const uint8_t *lf = NULL;
            for (size_t i = pos; i + 1 < len; i++)
                if (hdr[i] == '\r' && hdr[i + 1] == '\n') {
                    lf = hdr + i + 1;
                    break;
                }
            pos = lf != NULL ? (size_t)(lf - hdr) + 1 : len;
        } while (pos < len && dkim_wsp(hdr[pos]));
        struct dkim_field f = {.p = (const char *)hdr + start, .len = pos - start};
        while (f.name_len < f.len && f.p[f.name_len] != ':' && f.p[f.name_len] != ' ' &&
               f.p[f.name_len] != '\t' && f.p[f.name_len] != '\r')
            f.name_len++;
        size_t colon = f.name_len;
        while (colon < f.len && dkim_wsp((uint8_t)f.p[colon]))
            colon++;
        if (f.name_len == 0 || colon >= f.len || f.p[colon] != ':')
            continue;
        rv = buf_append(&fb, &f, sizeof(f));
    }
    if (rv != 0) {
        buf_free(&fb);
        return rv;
    }
    size_t bytes;
    *out = (struct dkim_field *)buf_steal(&fb, &bytes);
    *n = bytes / sizeof(struct dkim_field);
    return 0;
}

/* dkim_field_is - is f's name name (lower case)? */
static bool dkim_field_is(const struct dkim_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && hamr_strncaseeq(f->p, name, n);
}

/* dkim_addr_domain - the domain after the last '@' of addr, trimmed, checked, lower case. */
static int dkim_addr_domain(const char *addr, size_t len, char domain[DKIM_DOMAIN_MAX])
{
    const char *at = NULL;
    for (size_t i = 0; i < len; i++)
        if (addr[i] == '@')
            at = addr + i;
    if (at == NULL)
        return HAMR_ENOTFOUND;
    const char *d = at + 1;
    size_t dlen = len - (size_t)(d - addr);
    while (dlen > 0 && (*d == ' ' || *d == '\t'))
        d++, dlen--;
    while (dlen > 0 && (d[dlen - 1] == ' ' || d[dlen - 1] == '\t'))
        dlen--;
    if (dlen == 0 || dlen >= DKIM_DOMAIN_MAX || d[0] == '.' || d[0] == '-')
        return HAMR_ENOTFOUND;
    for (size_t i = 0; i < dlen; i++) {
        char c = d[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return HAMR_ENOTFOUND;
        domain[i] = c;
    }
    domain[dlen] = '\0';
    return 0;
}

/*
 * dkim_from_value - the domain of the one mailbox of a From: value (RFC
 * 5322 3.4): the addr-spec in <> if there is one, else the whole value;
 * quoted strings and comments skipped; a ',' or group ':' outside them is
 * more than one mailbox, refused.
 */
static int dkim_from_value(const char *v, size_t len, char domain[DKIM_DOMAIN_MAX])
{
    char bare[DKIM_DOMAIN_MAX * 2], angle[DKIM_DOMAIN_MAX * 2];
    size_t nb = 0, na = 0;
    int depth = 0, angles = 0;
    bool quote = false, in_angle = false;
    for (size_t i = 0; i < len; i++) {
        char c = v[i];
        if (quote || depth > 0) {
            if (c == '\\')
                i++;
            else if (quote && c == '"')
                quote = false;
            else if (!quote && c == '(')
                depth++;
            else if (!quote && c == ')')
                depth--;
            continue;
        }
        if (c == '"') {
            quote = true;
            c = 'q'; /* a quoted local part stands for some octets before the '@' */
        } else if (c == '(') {
            depth = 1;
            continue;
        } else if (c == '<') {
            if (angles++ > 0)
                return HAMR_ENOTFOUND;
            in_angle = true;
            continue;
        } else if (c == '>') {
            if (!in_angle)
                return HAMR_ENOTFOUND;
            in_angle = false;
            continue;
        } else if ((c == ',' || c == ';' || c == ':') && !in_angle) {
            return HAMR_ENOTFOUND;
        } else if (c == '\r' || c == '\n') {
            c = ' ';
        }
        if (in_angle) {
            if (na == sizeof(angle))
                return HAMR_ENOTFOUND;
            angle[na++] = c;
        } else if (angles == 0) {
            /* Only the bare addr-spec form uses this (display names are
             * before the '<'); a long display name just stops counting. */
            if (nb < sizeof(bare))
                bare[nb++] = c;
        }
    }
    if (quote || depth > 0 || in_angle)
        return HAMR_ENOTFOUND;
    if (angles > 0)
        return dkim_addr_domain(angle, na, domain);
    if (nb == sizeof(bare))
        return HAMR_ENOTFOUND;
    return dkim_addr_domain(bare, nb, domain);
}

int dkim_from_domain(const uint8_t *msg, size_t len, char domain[DKIM_DOMAIN_MAX])
{
    size_t hdr_len, body_off;
    dkim_split(msg, len, &hdr_len, &body_off);
    struct dkim_field *fields;
    size_t n;
    if (dkim_fields(msg, hdr_len, &fields, &n) != 0)
        return HAMR_ENOMEM;
    const struct dkim_field *from = NULL;
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        if (!dkim_field_is(&fields[i], "from"))
            continue;
        if (from != NULL)
            rv = HAMR_ENOTFOUND; /* RFC 5322 3.6: exactly one From: */
        from = &fields[i];
    }
    if (rv == 0 && from == NULL)
        rv = HAMR_ENOTFOUND;
    if (rv == 0) {
        const char *colon = memchr(from->p, ':', from->len);
        size_t off = (size_t)(colon + 1 - from->p);
        rv = dkim_from_value(colon + 1, from->len - off, domain);
    }
    free(fields);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* The DKIM-Signature header.                                               */
/* ------------------------------------------------------------------------ */

/* dkim_fold - a folded header being written: the column of its last line, the first error. */
struct dkim_fold {
    struct buf *out;
    size_t col;
    int rv;
};

/* dkim_fold_raw - append n octets as they are. */
static void dkim_fold_raw(struct dkim_fold *f, const char *s, size_t n)
{
    if (f->rv == 0)
        f->rv = buf_append(f->out, s, n);
    f->col += n;
}

/* dkim_fold_break - end the line; the next starts with HTAB (folding white space). */
static void dkim_fold_break(struct dkim_fold *f)
{
    dkim_fold_raw(f, "\r\n\t", 3);
    f->col = DKIM_TAB_WIDTH;
}

/*
 * dkim_fold_add - token tok after separator sep (" " between tags, "" inside
 * h=): on this line if it fits, else on a new one (the fold then stands in
 * for sep; both are white space to relaxed canonicalisation).
 */
static void dkim_fold_add(struct dkim_fold *f, const char *sep, const char *tok)
{
    size_t s = strlen(sep), n = strlen(tok);
    if (f->col + s + n > DKIM_FOLD_WIDTH && f->col > DKIM_TAB_WIDTH)
        dkim_fold_break(f);
    else
        dkim_fold_raw(f, sep, s);
    dkim_fold_raw(f, tok, n);
}

/* dkim_fold_b64 - a base64 value (may be longer than a line): split across lines as needed. */
static void dkim_fold_b64(struct dkim_fold *f, const char *v, size_t n)
{
    while (n > 0) {
        if (f->col + 8 > DKIM_FOLD_WIDTH)
            dkim_fold_break(f);
        size_t room = DKIM_FOLD_WIDTH - f->col;
        size_t k = n < room ? n : room;
        dkim_fold_raw(f, v, k);
        v += k;
        n -= k;
    }
}

/* dkim_key_alg - which algorithm key signs with: 0, or HAMR_EINVAL (type, RSA size). */
static int dkim_key_alg(EVP_PKEY *key, enum dkim_alg *alg)
{
    switch (EVP_PKEY_get_base_id(key)) {
        case EVP_PKEY_RSA:
            if (EVP_PKEY_get_bits(key) < DKIM_RSA_MIN_BITS)
                return HAMR_EINVAL;
            *alg = DKIM_ALG_RSA_SHA256;
            return 0;
        case EVP_PKEY_ED25519:
            *alg = DKIM_ALG_ED25519_SHA256;
            return 0;
        default:
            return HAMR_EINVAL;
    }
}

/*
 * dkim_header_input - the header hash input (RFC 6376 3.7) into in, and the
 * h= names, each followed by ':' (the last by ';'), into the tokens of hf:
 * every instance of every name of dkim_sign_headers, bottom-up.
 */
static int dkim_header_input(const struct dkim_field *fields,
                             size_t n,
                             bool oversign_from,
                             struct dkim_fold *hf,
                             struct buf *in)
{
    int rv = 0;
    bool first = true;
    for (size_t k = 0; dkim_sign_headers[k] != NULL && rv == 0; k++) {
        const char *name = dkim_sign_headers[k];
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
            count += dkim_field_is(&fields[i], name);
        /* Bounded, so the header fits DKIM_HEADER_MAX (and the room the
         * leader allows a forwarded body, PEER_POLICY_HEADER_ROOM): a
         * verifier takes instances from the bottom, so the ones above the
         * signed ones are simply unsigned (RFC 6376 5.4.2). */
        if (count > DKIM_INSTANCES_MAX)
            count = DKIM_INSTANCES_MAX;
        bool from = k == 0;
        size_t listed = count + (from && (oversign_from || count == 0) ? 1 : 0);
        for (size_t j = 0; j < listed && rv == 0; j++) {
            /* The j-th instance from the bottom (5.4.2); none left: a null string. */
            size_t seen = 0;
            for (size_t i = n; i-- > 0;) {
                if (!dkim_field_is(&fields[i], name))
                    continue;
                if (seen++ == j) {
                    rv = dkim_canon_header(fields[i].p, fields[i].len, true, in);
                    break;
                }
            }
            char tok[64];
            snprintf(tok, sizeof(tok), "%s%s:", first ? "h=" : "", name);
            dkim_fold_add(hf, first ? " " : "", tok);
            first = false;
        }
    }
    return rv != 0 ? rv : hf->rv;
}

/* dkim_b64 - base64 of p[0..n) into out (room for 4 * ceil(n / 3) + 1). */
static void dkim_b64(const uint8_t *p, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
}

/* dkim_signature - sign the header hash input in[0..n) with key; sig gets at most DKIM_SIG_MAX. */
static int dkim_signature(EVP_PKEY *key,
                          enum dkim_alg alg,
                          const uint8_t *in,
                          size_t n,
                          uint8_t *sig,
                          size_t *siglen)
{
    uint8_t hash[SHA256_DIGEST_LENGTH];
    const EVP_MD *md = EVP_sha256();
    if (alg == DKIM_ALG_ED25519_SHA256) {
        /* RFC 8463 3: Ed25519 signs the SHA-256 hash of the input, not the input. */
        SHA256(in, n, hash);
        in = hash;
        n = sizeof(hash);
        md = NULL;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return HAMR_ENOMEM;
    size_t need = 0;
    int ok = EVP_DigestSignInit(ctx, NULL, md, NULL, key) == 1 &&
             EVP_DigestSign(ctx, NULL, &need, in, n) == 1 && need <= DKIM_SIG_MAX;
    if (ok) {
        *siglen = DKIM_SIG_MAX;
        ok = EVP_DigestSign(ctx, sig, siglen, in, n) == 1;
    }
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        char e[512];
        log_error("dkim: signing failed: %s", dkim_openssl_errors(e, sizeof(e)));
        return HAMR_EIO;
    }
    return 0;
}

int dkim_sign(const struct dkim_sign_params *sp,
              EVP_PKEY *key,
              const uint8_t *msg,
              size_t len,
              struct buf *out,
              enum dkim_alg *alg)
{
    enum dkim_alg a;
    int rv = dkim_key_alg(key, &a);
    if (rv != 0)
        return rv;
    *alg = a;
    size_t hdr_len, body_off;
    dkim_split(msg, len, &hdr_len, &body_off);
    uint8_t bh[32];
    rv = dkim_body_hash(msg + body_off, len - body_off, bh);
    if (rv != 0)
        return rv;
    struct dkim_field *fields;
    size_t n;
    rv = dkim_fields(msg, hdr_len, &fields, &n);
    if (rv != 0)
        return rv;

    /* The header up to "b=", folded once, as it is signed and as it is sent. */
    struct buf hdr, in;
    buf_init(&hdr, DKIM_HEADER_MAX);
    buf_init(&in, DKIM_INPUT_LIMIT);
    struct dkim_fold f = {.out = &hdr};
    char tok[DKIM_DOMAIN_MAX + 16];
    dkim_fold_raw(&f, "DKIM-Signature: v=1;", 20);
    snprintf(tok, sizeof(tok), "a=%s;", dkim_alg_name(a));
    dkim_fold_add(&f, " ", tok);
    dkim_fold_add(&f, " ", "c=relaxed/relaxed;");
    snprintf(tok, sizeof(tok), "d=%s;", sp->domain);
    dkim_fold_add(&f, " ", tok);
    snprintf(tok, sizeof(tok), "s=%s;", sp->selector);
    dkim_fold_add(&f, " ", tok);
    snprintf(tok, sizeof(tok), "t=%llu;", (unsigned long long)sp->time);
    dkim_fold_add(&f, " ", tok);
    rv = dkim_header_input(fields, n, sp->oversign_from, &f, &in);
    free(fields);
    if (rv == 0 && f.rv == 0) {
        hdr.data[hdr.len - 1] = ';'; /* the last h= name ends the tag */
        char b64[48];
        dkim_b64(bh, sizeof(bh), b64);
        snprintf(tok, sizeof(tok), "bh=%s;", b64);
        dkim_fold_add(&f, " ", tok);
        dkim_fold_add(&f, " ", "b=");
        rv = f.rv;
    } else if (rv == 0) {
        rv = f.rv;
    }
    /* This field itself, empty b=, no CRLF, ends the input (3.7). */
    if (rv == 0)
        rv = dkim_canon_header((const char *)hdr.data, hdr.len, false, &in);
    uint8_t sig[DKIM_SIG_MAX];
    size_t siglen = 0;
    if (rv == 0)
        rv = dkim_signature(key, a, in.data, in.len, sig, &siglen);
    if (rv == 0) {
        char b64[DKIM_SIG_MAX * 4 / 3 + 8];
        dkim_b64(sig, siglen, b64);
        dkim_fold_b64(&f, b64, strlen(b64));
        dkim_fold_raw(&f, "\r\n", 2);
        rv = f.rv;
    }
    if (rv == HAMR_ETOOBIG)
        rv = HAMR_EINVAL;
    if (rv == 0)
        rv = buf_append(out, hdr.data, hdr.len);
    buf_free(&hdr);
    buf_free(&in);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* The key table.                                                           */
/* ------------------------------------------------------------------------ */

struct dkim_keys {
    struct dkim_key_spec *specs;
    EVP_PKEY **keys; /* keys[i] is specs[i]'s */
    size_t n;
};

/* dkim_key_load - read one PEM private key file: RSA of at least 1024 bits, or Ed25519. */
static int dkim_key_load(const char *path, EVP_PKEY **out, char *err, size_t errlen)
{
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL) {
        int e = errno;
        ERR_clear_error();
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
        return HAMR_EIO;
    }
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key == NULL) {
        char e[256];
        snprintf(err, errlen, "%s: not a PEM private key (%s)", path,
                 dkim_openssl_errors(e, sizeof(e)));
        return HAMR_EINVAL;
    }
    enum dkim_alg alg;
    if (dkim_key_alg(key, &alg) != 0) {
        if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA)
            snprintf(err, errlen, "%s: RSA key of %d bits; DKIM needs at least %d", path,
                     EVP_PKEY_get_bits(key), DKIM_RSA_MIN_BITS);
        else
            snprintf(err, errlen, "%s: a %s key; DKIM keys are RSA or Ed25519", path,
                     OBJ_nid2sn(EVP_PKEY_get_base_id(key)));
        EVP_PKEY_free(key);
        return HAMR_EINVAL;
    }
    if (alg == DKIM_ALG_RSA_SHA256 && EVP_PKEY_get_bits(key) < DKIM_RSA_WARN_BITS)
        log_warn("dkim: %s: RSA key of %d bits; RFC 8301 asks for at least %d", path,
                 EVP_PKEY_get_bits(key), DKIM_RSA_WARN_BITS);
    *out = key;
    return 0;
}

/* dkim_keys_free_array - free n keys and the array. */
static void dkim_keys_free_array(EVP_PKEY **keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        EVP_PKEY_free(keys[i]);
    free(keys);
}

/* dkim_keys_load_all - one key per spec into a new array, or none. */
static int dkim_keys_load_all(const struct dkim_key_spec *specs,
                              size_t n,
                              EVP_PKEY ***out,
                              char *err,
                              size_t errlen)
{
    EVP_PKEY **keys = calloc(n > 0 ? n : 1, sizeof(*keys));
    if (keys == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rv = dkim_key_load(specs[i].path, &keys[i], err, errlen);
        if (rv != 0) {
            dkim_keys_free_array(keys, i);
            return rv;
        }
    }
    *out = keys;
    return 0;
}

int dkim_keys_new(const struct dkim_key_spec *specs,
                  size_t n,
                  struct dkim_keys **out,
                  char *err,
                  size_t errlen)
{
    struct dkim_keys *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return HAMR_ENOMEM;
    k->specs = calloc(n > 0 ? n : 1, sizeof(*specs));
    if (k->specs == NULL) {
        free(k);
        return HAMR_ENOMEM;
    }
    if (n > 0)
        memcpy(k->specs, specs, n * sizeof(*specs));
    k->n = n;
    int rv = dkim_keys_load_all(k->specs, n, &k->keys, err, errlen);
    if (rv != 0) {
        free(k->specs);
        free(k);
        return rv;
    }
    *out = k;
    return 0;
}

int dkim_keys_reload(struct dkim_keys *k, char *err, size_t errlen)
{
    EVP_PKEY **keys;
    int rv = dkim_keys_load_all(k->specs, k->n, &keys, err, errlen);
    if (rv != 0)
        return rv;
    dkim_keys_free_array(k->keys, k->n);
    k->keys = keys;
    return 0;
}

struct dkim_keys *dkim_keys_free(struct dkim_keys *k)
{
    if (k == NULL)
        return NULL;
    dkim_keys_free_array(k->keys, k->n);
    free(k->specs);
    free(k);
    return NULL;
}

size_t dkim_keys_count(const struct dkim_keys *k)
{
    return k != NULL ? k->n : 0;
}

/* dkim_keys_find - the entry for domain: exact, else the longest ".suffix" it ends with; -1. */
static ssize_t dkim_keys_find(const struct dkim_keys *k, const char *domain)
{
    size_t dlen = strlen(domain);
    ssize_t best = -1;
    size_t best_len = 0;
    for (size_t i = 0; i < k->n; i++) {
        const char *e = k->specs[i].domain;
        size_t elen = strlen(e);
        if (e[0] != '.') {
            if (strcmp(e, domain) == 0)
                return (ssize_t)i;
            continue;
        }
        if (dlen > elen && strcmp(domain + dlen - elen, e) == 0 && elen > best_len) {
            best = (ssize_t)i;
            best_len = elen;
        }
    }
    return best;
}

int dkim_keys_sign(const struct dkim_keys *k,
                   const uint8_t *msg,
                   size_t len,
                   uint64_t time,
                   bool oversign_from,
                   struct buf *out,
                   enum dkim_alg *alg,
                   char *err,
                   size_t errlen)
{
    char domain[DKIM_DOMAIN_MAX];
    int rv = dkim_from_domain(msg, len, domain);
    if (rv != 0)
        return rv;
    ssize_t i = dkim_keys_find(k, domain);
    if (i < 0)
        return HAMR_ENOTFOUND;
    const struct dkim_key_spec *s = &k->specs[i];
    /* A ".example.com" entry signs as d=example.com, the parent of the From: domain. */
    struct dkim_sign_params sp = {
        .domain = s->domain[0] == '.' ? s->domain + 1 : s->domain,
        .selector = s->selector,
        .time = time,
        .oversign_from = oversign_from,
    };
    rv = dkim_sign(&sp, k->keys[i], msg, len, out, alg);
    if (rv != 0)
        snprintf(err, errlen, "d=%s s=%s: %s", sp.domain, s->selector, hamr_strerror(rv));
    return rv;
}
