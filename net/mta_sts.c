/*
 * mta_sts.c - the fetch of net/mta_sts.h: a domain's MTA-STS policy found
 * through DNS and fetched over HTTPS (RFC 8461 3.1 to 3.3), on the loop.
 *
 * Happy path: sts_fetch checks the domain, starts the overall timer and
 * asks for the TXT of _mta-sts.<domain> -> sts_fetch_after_txt keeps the
 * one STS record's id and asks for the A and AAAA of mta-sts.<domain> at
 * once -> sts_fetch_after_addr collects them; the last answer ->
 * sts_fetch_connect tries the addresses in turn (IPv4 first) ->
 * sts_fetch_after_connect starts TLS (SNI, chain and name checked against
 * mta-sts.<domain>) -> sts_fetch_after_handshake writes one GET request
 * (HTTP/1.1, Connection: close) -> sts_fetch_read_cb feeds the response
 * to the reader (sts_http_feed) until the body is complete ->
 * sts_fetch_after_body parses the policy and calls back STS_OK.
 *
 * Failure modes: the TXT lookup's TEMPFAIL is STS_TEMPFAIL; NXDOMAIN,
 * NODATA, no STS record, several or a malformed one are STS_NONE (RFC
 * 8461 3.1: "assume the recipient domain does not have an available
 * MTA-STS Policy"). Everything after a good TXT record is STS_FAILED with
 * a reason: no address; no address that accepts a connection (each one
 * is tried, the last error is reported); TLS (a certificate that does not
 * chain to the trust store or does not name the host fails the handshake:
 * never a policy, and no other address is tried); an HTTP status other
 * than 200 (redirects are not followed, RFC 8461 3.3); a Content-Type
 * other than text/plain; a header block over STS_HEAD_MAX; a body over
 * max_body; a transfer coding other than chunked; a connection closed
 * before the end of a sized body; a policy that does not parse; the
 * overall timeout (STS_TEMPFAIL while the TXT lookup is still out).
 *
 * Callbacks never run inside sts_fetch: the first outcome comes from a
 * DNS callback at the earliest. sts_fetch_finish calls back once and
 * closes what the fetch holds; the fetch's memory goes when its last
 * handle's close callback has run (sts_fetch_closed_cb), so that a
 * callback may call sts_free.
 *
 * Owns: struct sts (its TLS context reference, the list of fetches not
 * called back) and each struct sts_fetch (its DNS queries, overall timer,
 * TCP handle, TLS stream, request and response buffers).
 *
 * Security: the policy host, the DNS answers and everything on the
 * connection are untrusted. Memory per fetch is fixed at its creation
 * (header block, body and chunk-size line are bounded); nothing is
 * followed (no redirect) and nothing but this one GET is sent; reasons
 * quote peer text through log_printable. See SECURITY.md N10.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/dns.h"
#include "net/mta_sts.h"
#include "net/tls.h"
#include "net/tls_stream.h"

#define STS_TIMEOUT_DEFAULT_MS 30000
#define STS_PORT_DEFAULT 443
/* The response's status line and header fields, at most. */
#define STS_HEAD_MAX 8192
/* A chunk-size line (size, extensions), at most. */
#define STS_CHUNK_LINE_MAX 128
/* Addresses tried per record type at most. */
#define STS_ADDRS_PER_TYPE 4
#define STS_READ_CHUNK 16384

static const char sts_txt_prefix[] = "_mta-sts.";
static const char sts_host_prefix[] = "mta-sts.";
static const char sts_path[] = "/.well-known/mta-sts.txt";

/* sts_http_state - where the response reader is. */
enum sts_http_state {
    STS_HTTP_HEAD = 0,   /* status line and header fields, to the empty line */
    STS_HTTP_LENGTH,     /* a body of Content-Length octets */
    STS_HTTP_TO_CLOSE,   /* a body read to the end of the connection */
    STS_HTTP_CHUNK_SIZE, /* a chunk-size line */
    STS_HTTP_CHUNK_DATA, /* a chunk's octets */
    STS_HTTP_CHUNK_END,  /* the CRLF after a chunk */
    STS_HTTP_DONE,       /* the body is complete */
};

/* sts_http - the response reader: bounded buffers, resumable at any octet. */
struct sts_http {
    enum sts_http_state state;
    size_t max_body;
    char head[STS_HEAD_MAX];
    size_t head_len;
    char line[STS_CHUNK_LINE_MAX];
    size_t line_len;
    uint64_t remaining; /* LENGTH, CHUNK_DATA */
    char *body;         /* max_body octets */
    size_t body_len;
    int err;       /* the failure: HAMR_EPROTO, HAMR_TOOBIG */
    char why[160]; /* and its reason */
};

enum sts_fetch_state {
    STS_FETCH_TXT = 0,
    STS_FETCH_ADDR,
    STS_FETCH_CONNECT,
    STS_FETCH_TLS,
    STS_FETCH_HTTP,
};

static const char *const sts_fetch_state_names[] = {"TXT lookup", "address lookup", "connect",
                                                    "TLS handshake", "HTTP"};

struct sts_fetch;

/* sts_addr_lookup - one of a fetch's two address queries. */
struct sts_addr_lookup {
    struct sts_fetch *f;
    struct dns_query *q; /* while in flight */
};

struct sts_fetch {
    struct sts *s;                 /* NULL once called back or cancelled */
    struct sts_fetch *prev, *next; /* s->fetches while s is set */
    sts_fetch_cb cb;
    void *cb_arg;
    enum sts_fetch_state state;
    /* Room for the prefix before any domain (sts_domain_normalize keeps the sum in DNS_NAME_MAX).
     */
    char txt_name[DNS_NAME_MAX + 16];
    char host[DNS_NAME_MAX + 16];
    char known_id[STS_ID_MAX + 1];
    struct dns_query *txtq;
    struct sts_addr_lookup look[2]; /* A, AAAA */
    unsigned addr_pending;
    bool addr_tempfail;
    struct dns_addr addrs[2][STS_ADDRS_PER_TYPE]; /* A, AAAA answers */
    size_t n_addrs[2];
    size_t tried; /* addresses tried so far, A ones first */
    char remote[INET6_ADDRSTRLEN + 8];
    char last_err[128];
    uv_timer_t timer;
    struct tls_stream_handle h;
    uv_connect_t connect;
    struct tls_stream *ts;
    unsigned handles; /* open: the timer, the TCP handle */
    bool tcp_open;
    char req[DNS_NAME_MAX + 272];
    size_t req_len;
    char rbuf[STS_READ_CHUNK];
    struct sts_http http;
    struct sts_result res;
};

struct sts {
    struct dns *dns;
    uv_loop_t *loop;
    SSL_CTX *ctx;
    struct sts_config cfg;
    struct sts_fetch *fetches; /* not called back yet */
    bool closing;
};

/* sts_status_name - see mta_sts.h. */
const char *sts_status_name(enum sts_status status)
{
    switch (status) {
        case STS_OK:
            return "ok";
        case STS_NONE:
            return "none";
        case STS_TEMPFAIL:
            return "tempfail";
        case STS_FAILED:
            return "failed";
        case STS_UNCHANGED:
            return "unchanged";
    }
    return "?";
}

/*
 * The response reader. Pure: octets in, a state out; sts_fetch_read_cb
 * feeds it what each read gave.
 */

/* sts_http_fail - the reader fails with err and a reason; returns err. */
__attribute__((format(printf, 3, 4))) static int sts_http_fail(struct sts_http *r,
                                                               int err,
                                                               const char *fmt,
                                                               ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    r->err = err;
    return err;
}

/* sts_http_trim - p[0..*n) without the spaces and tabs around it. */
static const char *sts_http_trim(const char *p, size_t *n)
{
    while (*n > 0 && (p[0] == ' ' || p[0] == '\t')) {
        p++;
        (*n)--;
    }
    while (*n > 0 && (p[*n - 1] == ' ' || p[*n - 1] == '\t'))
        (*n)--;
    return p;
}

/* sts_http_is - p[0..n) is word, ignoring ASCII case. */
static bool sts_http_is(const char *p, size_t n, const char *word)
{
    return n == strlen(word) && hamr_strncaseeq(p, word, n);
}

/* sts_http_status - the status line "HTTP/1.x NNN reason": 0 if 200, else a failure. */
static int sts_http_status(struct sts_http *r, const char *p, size_t n)
{
    char q[48];
    if (n < 12 || (memcmp(p, "HTTP/1.1 ", 9) != 0 && memcmp(p, "HTTP/1.0 ", 9) != 0) ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (n > 12 && p[12] != ' '))
        return sts_http_fail(r, HAMR_EPROTO, "not an HTTP/1.x response: \"%s\"",
                             log_printable(q, sizeof(q), p, n < 40 ? n : 40));
    int code = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (code == 200)
        return 0;
    if (code >= 300 && code < 400)
        return sts_http_fail(r, HAMR_EPROTO,
                             "HTTP status %d: redirects are not followed (RFC 8461 3.3)", code);
    return sts_http_fail(r, HAMR_EPROTO, "HTTP status %d", code);
}

/*
 * sts_http_head - the header block is complete (head[0..head_len), the
 * empty line excluded): status 200, text/plain, and how the body ends.
 */
static int sts_http_head(struct sts_http *r)
{
    const char *p = r->head, *end = r->head + r->head_len;
    bool first = true, type_ok = false, have_len = false, chunked = false;
    uint64_t length = 0;
    char q[48];

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        const char *next = nl != NULL ? nl + 1 : end;
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (first) {
            int rc = sts_http_status(r, p, n);
            if (rc != 0)
                return rc;
            first = false;
            p = next;
            continue;
        }
        if (n > 0 && (p[0] == ' ' || p[0] == '\t'))
            return sts_http_fail(r, HAMR_EPROTO, "folded header field (RFC 9112 5.2)");
        const char *colon = memchr(p, ':', n);
        if (colon == NULL || colon == p)
            return sts_http_fail(r, HAMR_EPROTO, "malformed header field \"%s\"",
                                 log_printable(q, sizeof(q), p, n < 40 ? n : 40));
        size_t nlen = (size_t)(colon - p), vlen = n - nlen - 1;
        const char *v = sts_http_trim(colon + 1, &vlen);
        if (sts_http_is(p, nlen, "Content-Type")) {
            /* RFC 8461 3.3: media type text/plain; parameters (charset) allowed. */
            const char *semi = memchr(v, ';', vlen);
            size_t tlen = semi != NULL ? (size_t)(semi - v) : vlen;
            const char *t = sts_http_trim(v, &tlen);
            if (!sts_http_is(t, tlen, "text/plain"))
                return sts_http_fail(r, HAMR_EPROTO, "Content-Type \"%s\" is not text/plain",
                                     log_printable(q, sizeof(q), v, vlen < 40 ? vlen : 40));
            type_ok = true;
        } else if (sts_http_is(p, nlen, "Content-Length")) {
            uint64_t len = 0;
            if (vlen == 0 || vlen > 19)
                return sts_http_fail(r, HAMR_EPROTO, "Content-Length malformed");
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return sts_http_fail(r, HAMR_EPROTO, "Content-Length malformed");
                len = len * 10 + (uint64_t)(v[i] - '0');
            }
            if (have_len && len != length)
                return sts_http_fail(r, HAMR_EPROTO, "Content-Length given twice, differently");
            have_len = true;
            length = len;
        } else if (sts_http_is(p, nlen, "Transfer-Encoding")) {
            if (!sts_http_is(v, vlen, "chunked") || chunked)
                return sts_http_fail(r, HAMR_EPROTO, "Transfer-Encoding \"%s\" unsupported",
                                     log_printable(q, sizeof(q), v, vlen < 40 ? vlen : 40));
            chunked = true;
        }
        p = next;
    }
    if (first)
        return sts_http_fail(r, HAMR_EPROTO, "empty response header");
    if (!type_ok)
        return sts_http_fail(r, HAMR_EPROTO, "no Content-Type (text/plain expected)");
    if (chunked && have_len) /* RFC 9112 6.1: a sign of smuggling; refuse rather than choose */
        return sts_http_fail(r, HAMR_EPROTO, "both Content-Length and Transfer-Encoding");
    if (chunked) {
        r->state = STS_HTTP_CHUNK_SIZE;
    } else if (have_len) {
        if (length > r->max_body)
            return sts_http_fail(r, HAMR_ETOOBIG, "Content-Length %llu over %zu",
                                 (unsigned long long)length, r->max_body);
        r->remaining = length;
        r->state = length > 0 ? STS_HTTP_LENGTH : STS_HTTP_DONE;
    } else {
        r->state = STS_HTTP_TO_CLOSE;
    }
    return 0;
}

/* sts_http_body - n body octets kept, within max_body. */
static int sts_http_body(struct sts_http *r, const char *p, size_t n)
{
    if (n > r->max_body - r->body_len)
        return sts_http_fail(r, HAMR_ETOOBIG, "body over %zu octets", r->max_body);
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    return 0;
}

/* sts_http_chunk_size - a complete chunk-size line (CR and LF removed): hex size [; ext]. */
static int sts_http_chunk_size(struct sts_http *r)
{
    uint64_t size = 0;
    size_t i = 0;
    for (; i < r->line_len; i++) {
        char c = r->line[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            break;
        if (i >= 15)
            return sts_http_fail(r, HAMR_ETOOBIG, "chunk size too long");
        size = size * 16 + (uint64_t)d;
    }
    if (i == 0 || (i < r->line_len && r->line[i] != ';' && r->line[i] != ' ' && r->line[i] != '\t'))
        return sts_http_fail(r, HAMR_EPROTO, "chunk size malformed");
    r->line_len = 0;
    if (size == 0) {
        r->state = STS_HTTP_DONE; /* the trailer section is not read: Connection: close */
        return 0;
    }
    if (size > r->max_body - r->body_len)
        return sts_http_fail(r, HAMR_ETOOBIG, "body over %zu octets", r->max_body);
    r->remaining = size;
    r->state = STS_HTTP_CHUNK_DATA;
    return 0;
}

/* sts_http_head_end - the header block in head ends with an empty line (CRLF CRLF or LF LF). */
static bool sts_http_head_end(const struct sts_http *r)
{
    size_t n = r->head_len;
    if (n >= 2 && r->head[n - 1] == '\n' && r->head[n - 2] == '\n')
        return true;
    return n >= 3 && r->head[n - 1] == '\n' && r->head[n - 2] == '\r' && r->head[n - 3] == '\n';
}

/*
 * sts_http_feed - n octets of the response. 0: more wanted (or the body is
 * complete: state DONE; anything after it is ignored); else the failure
 * (err and why set).
 */
static int sts_http_feed(struct sts_http *r, const char *p, size_t n)
{
    size_t i = 0;
    int rc = 0;
    while (i < n && rc == 0 && r->state != STS_HTTP_DONE) {
        switch (r->state) {
            case STS_HTTP_HEAD:
                if (r->head_len == sizeof(r->head))
                    return sts_http_fail(r, HAMR_EPROTO, "response header over %d octets",
                                         STS_HEAD_MAX);
                r->head[r->head_len++] = p[i++];
                if (sts_http_head_end(r)) {
                    /* The empty line is left out: the fields end with the last line's LF. */
                    r->head_len -= r->head[r->head_len - 2] == '\r' ? 2 : 1;
                    rc = sts_http_head(r);
                }
                break;
            case STS_HTTP_LENGTH:
            case STS_HTTP_CHUNK_DATA: {
                size_t take = n - i < r->remaining ? n - i : (size_t)r->remaining;
                rc = sts_http_body(r, p + i, take);
                i += take;
                r->remaining -= take;
                if (rc == 0 && r->remaining == 0)
                    r->state = r->state == STS_HTTP_LENGTH ? STS_HTTP_DONE : STS_HTTP_CHUNK_END;
                break;
            }
            case STS_HTTP_TO_CLOSE:
                rc = sts_http_body(r, p + i, n - i);
                i = n;
                break;
            case STS_HTTP_CHUNK_SIZE:
                if (p[i] == '\n') {
                    i++;
                    if (r->line_len > 0 && r->line[r->line_len - 1] == '\r')
                        r->line_len--;
                    rc = sts_http_chunk_size(r);
                } else if (r->line_len == sizeof(r->line)) {
                    rc = sts_http_fail(r, HAMR_EPROTO, "chunk-size line over %d octets",
                                       STS_CHUNK_LINE_MAX);
                } else {
                    r->line[r->line_len++] = p[i++];
                }
                break;
            case STS_HTTP_CHUNK_END:
                /* CRLF (or LF) after the chunk's data. */
                if (p[i] == '\r' && r->line_len == 0) {
                    r->line_len = 1;
                    i++;
                } else if (p[i] == '\n') {
                    r->line_len = 0;
                    r->state = STS_HTTP_CHUNK_SIZE;
                    i++;
                } else {
                    rc = sts_http_fail(r, HAMR_EPROTO, "chunk not followed by CRLF");
                }
                break;
            case STS_HTTP_DONE:
                break;
        }
    }
    return rc;
}

/* sts_http_eof - the connection ended: 0 if the body is complete, else a failure. */
static int sts_http_eof(struct sts_http *r)
{
    if (r->state == STS_HTTP_TO_CLOSE)
        r->state = STS_HTTP_DONE;
    if (r->state == STS_HTTP_DONE)
        return 0;
    return sts_http_fail(r, HAMR_EPROTO, "connection closed before the end of the response");
}

/* The fetch. */

/* sts_fetch_unlink - f off s's list of fetches not called back. */
static void sts_fetch_unlink(struct sts_fetch *f)
{
    struct sts *s = f->s;
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        s->fetches = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* sts_fetch_closed_cb - one of f's handles is closed: the last one frees f, or tries on. */
static void sts_fetch_closed_cb(uv_handle_t *h);

/* sts_fetch_close_tcp - the connection (if open) closed; its close callback goes on. */
static void sts_fetch_close_tcp(struct sts_fetch *f)
{
    if (!f->tcp_open || uv_is_closing((uv_handle_t *)&f->h.u.tcp))
        return;
    uv_close((uv_handle_t *)&f->h.u.tcp, sts_fetch_closed_cb);
}

/*
 * sts_fetch_end - f is over (called back or cancelled): off s's list, its
 * lookups cancelled, its handles closing. f->s is NULL from here on, which
 * every later callback of f's reads as "over".
 */
static void sts_fetch_end(struct sts_fetch *f)
{
    if (f->s == NULL)
        return;
    sts_fetch_unlink(f);
    f->s = NULL;
    if (f->txtq != NULL) {
        dns_cancel(f->txtq);
        f->txtq = NULL;
    }
    for (size_t i = 0; i < 2; i++) {
        if (f->look[i].q != NULL) {
            dns_cancel(f->look[i].q);
            f->look[i].q = NULL;
        }
    }
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->timer, sts_fetch_closed_cb);
    sts_fetch_close_tcp(f);
}

/*
 * sts_fetch_finish - the outcome (status, err, reason) to f's caller,
 * once; f ends first, so that the callback may fetch, cancel or free s.
 */
__attribute__((format(printf, 4, 5))) static void sts_fetch_finish(struct sts_fetch *f,
                                                                   enum sts_status status,
                                                                   int err,
                                                                   const char *fmt,
                                                                   ...)
{
    va_list ap;
    if (f->s == NULL)
        return;
    f->res.status = status;
    f->res.err = err;
    if (status != STS_OK)
        memset(&f->res.policy, 0, sizeof(f->res.policy));
    va_start(ap, fmt);
    vsnprintf(f->res.why, sizeof(f->res.why), fmt, ap);
    va_end(ap);
    log_debug("mta-sts: fetch domain=%s status=%s id=%s why=\"%s\"", f->res.domain,
              sts_status_name(status), f->res.id[0] ? f->res.id : "-", f->res.why);
    sts_fetch_end(f);
    f->cb(f->cb_arg, &f->res);
}

static void sts_fetch_connect(struct sts_fetch *f);

/* sts_fetch_closed_cb - see above. */
static void sts_fetch_closed_cb(uv_handle_t *h)
{
    struct sts_fetch *f = h->data;
    if (h == (uv_handle_t *)&f->h.u.tcp) {
        tls_stream_free(f->ts);
        f->ts = NULL;
        f->tcp_open = false;
    }
    if (--f->handles == 0) {
        free(f->http.body);
        free(f);
        return;
    }
    if (f->s != NULL && !f->tcp_open && f->state == STS_FETCH_CONNECT)
        sts_fetch_connect(f); /* the next address */
}

/* sts_fetch_timeout_cb - the overall timeout: TEMPFAIL while the TXT is out, else FAILED. */
static void sts_fetch_timeout_cb(uv_timer_t *t)
{
    struct sts_fetch *f = t->data;
    struct sts *s = f->s;
    if (s == NULL)
        return;
    sts_fetch_finish(f, f->state == STS_FETCH_TXT ? STS_TEMPFAIL : STS_FAILED, HAMR_ETIMEDOUT,
                     "timed out after %llu ms in %s%s%s", (unsigned long long)s->cfg.timeout_ms,
                     sts_fetch_state_names[f->state], f->remote[0] ? " with " : "", f->remote);
}

static void sts_fetch_after_addr(void *arg, const struct dns_result *res);

/*
 * sts_fetch_after_txt - the TXT answer: exactly one STS record with an id
 * (RFC 8461 3.1), then mta-sts.<domain>'s addresses asked for; or the
 * outcome.
 */
static void sts_fetch_after_txt(void *arg, const struct dns_result *res)
{
    static const enum dns_type types[2] = {DNS_TYPE_A, DNS_TYPE_AAAA};
    struct sts_fetch *f = arg;
    struct sts *s = f->s;
    f->txtq = NULL;
    switch (res->status) {
        case DNS_TEMPFAIL:
            sts_fetch_finish(f, STS_TEMPFAIL, res->err, "TXT %s: %s", f->txt_name, res->why);
            return;
        case DNS_NXDOMAIN:
        case DNS_NODATA:
            sts_fetch_finish(f, STS_NONE, 0, "TXT %s: %s", f->txt_name,
                             dns_status_name(res->status));
            return;
        case DNS_OK:
            break;
    }
    size_t found = 0;
    int rc = HAMR_ENOTFOUND;
    char id[STS_ID_MAX + 1] = "";
    for (size_t i = 0; i < res->n; i++) {
        char one[STS_ID_MAX + 1];
        int r = sts_txt_parse(res->u.txt[i].text, res->u.txt[i].len, one, sizeof(one));
        if (r == HAMR_ENOTFOUND)
            continue;
        found++;
        rc = r;
        if (r == 0)
            memcpy(id, one, sizeof(id));
    }
    if (found != 1 || rc != 0) {
        sts_fetch_finish(f, STS_NONE, 0, "TXT %s: %s", f->txt_name,
                         found == 0  ? "no v=STSv1 record"
                         : found > 1 ? "several v=STSv1 records (RFC 8461 3.1)"
                                     : "v=STSv1 record malformed");
        return;
    }
    memcpy(f->res.id, id, sizeof(f->res.id));
    if (f->known_id[0] != '\0' && strcmp(f->known_id, id) == 0) {
        sts_fetch_finish(f, STS_UNCHANGED, 0, "id %s is the known one", id);
        return;
    }
    f->state = STS_FETCH_ADDR;
    for (size_t i = 0; i < 2; i++) {
        f->look[i].f = f;
        rc = dns_query(s->dns, f->host, types[i], sts_fetch_after_addr, &f->look[i], &f->look[i].q);
        if (rc == 0)
            f->addr_pending++;
        else
            f->look[i].q = NULL;
    }
    if (f->addr_pending == 0)
        sts_fetch_finish(f, STS_FAILED, rc, "address lookup of %s: %s", f->host, hamr_strerror(rc));
    /* Otherwise asynchronous processing goes on in sts_fetch_after_addr. */
}

/* sts_fetch_after_addr - one address answer; the last one starts the connections. */
static void sts_fetch_after_addr(void *arg, const struct dns_result *res)
{
    struct sts_addr_lookup *l = arg;
    struct sts_fetch *f = l->f;
    size_t t = l == &f->look[0] ? 0 : 1;
    l->q = NULL;
    f->addr_pending--;
    if (res->status == DNS_OK) {
        for (size_t i = 0; i < res->n && f->n_addrs[t] < STS_ADDRS_PER_TYPE; i++)
            if (res->u.addr[i].family == (t == 0 ? AF_INET : AF_INET6))
                f->addrs[t][f->n_addrs[t]++] = res->u.addr[i];
    } else if (res->status == DNS_TEMPFAIL) {
        f->addr_tempfail = true;
    }
    if (f->addr_pending > 0)
        return;
    if (f->n_addrs[0] + f->n_addrs[1] == 0) {
        sts_fetch_finish(f, STS_FAILED, f->addr_tempfail ? HAMR_ECONNECT : HAMR_ENOTFOUND,
                         "no address for %s%s", f->host,
                         f->addr_tempfail ? " (lookup failed for now)" : "");
        return;
    }
    f->state = STS_FETCH_CONNECT;
    sts_fetch_connect(f);
}

static void sts_fetch_after_connect(uv_connect_t *req, int status);

/*
 * sts_fetch_connect - a connection to the next address (the A answers,
 * then the AAAA ones); none left is the outcome. A failure closes the
 * handle, and its close callback comes back here.
 */
static void sts_fetch_connect(struct sts_fetch *f)
{
    struct sts *s = f->s;
    struct sockaddr_storage ss;
    size_t total = f->n_addrs[0] + f->n_addrs[1];
    if (f->tried == total) {
        sts_fetch_finish(f, STS_FAILED, HAMR_ECONNECT, "no connection to %s: %s", f->host,
                         f->last_err);
        return;
    }
    size_t i = f->tried++;
    const struct dns_addr *a =
        i < f->n_addrs[0] ? &f->addrs[0][i] : &f->addrs[1][i - f->n_addrs[0]];
    memset(&ss, 0, sizeof(ss));
    char text[INET6_ADDRSTRLEN] = "";
    inet_ntop(a->family, a->addr, text, sizeof(text));
    if (a->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(s->cfg.https_port);
        memcpy(&sin->sin_addr, a->addr, 4);
        snprintf(f->remote, sizeof(f->remote), "%s:%u", text, s->cfg.https_port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(s->cfg.https_port);
        memcpy(&sin6->sin6_addr, a->addr, 16);
        snprintf(f->remote, sizeof(f->remote), "[%s]:%u", text, s->cfg.https_port);
    }
    int rc = uv_tcp_init(s->loop, &f->h.u.tcp);
    if (rc != 0) {
        sts_fetch_finish(f, STS_FAILED, HAMR_EIO, "socket: %s", uv_strerror(rc));
        return;
    }
    f->h.u.tcp.data = f;
    f->tcp_open = true;
    f->handles++;
    rc = uv_tcp_connect(&f->connect, &f->h.u.tcp, (const struct sockaddr *)&ss,
                        sts_fetch_after_connect);
    if (rc != 0) {
        snprintf(f->last_err, sizeof(f->last_err), "%s: %s", f->remote, uv_strerror(rc));
        sts_fetch_close_tcp(f); /* the close callback tries the next address */
    }
}

static void sts_fetch_alloc_cb(void *data, uv_buf_t *buf);
static void sts_fetch_read_cb(void *data, ssize_t nread, const uv_buf_t *buf);
static void sts_fetch_after_handshake(void *data, int status);

/* sts_fetch_after_connect - TCP is up: TLS over it, checked against the policy host. */
static void sts_fetch_after_connect(uv_connect_t *req, int status)
{
    struct sts_fetch *f = hamr_container_of(req, struct sts_fetch, connect);
    struct sts *s = f->s;
    if (s == NULL)
        return; /* over: the handle is closing */
    if (status < 0) {
        snprintf(f->last_err, sizeof(f->last_err), "%s: %s", f->remote, uv_strerror(status));
        sts_fetch_close_tcp(f); /* the close callback tries the next address */
        return;
    }
    struct tls_stream_ops ops = {
        .data = f,
        .alloc_cb = sts_fetch_alloc_cb,
        .read_cb = sts_fetch_read_cb,
        .handshake_cb = sts_fetch_after_handshake,
    };
    int rc = tls_stream_init_client(&f->ts, &f->h, s->ctx, f->host, &ops);
    if (rc != 0) {
        sts_fetch_finish(f, STS_FAILED, rc, "TLS to %s: %s", f->remote, hamr_strerror(rc));
        return;
    }
    f->state = STS_FETCH_TLS;
    rc = tls_stream_read_start(f->ts);
    if (rc != 0)
        sts_fetch_finish(f, STS_FAILED, HAMR_EPROTO, "TLS to %s: %s", f->remote,
                         rc == UV_EPROTO ? tls_stream_error(f->ts) : uv_strerror(rc));
    /* Otherwise asynchronous processing goes on in sts_fetch_after_handshake. */
}

/* sts_fetch_after_write - the request is written (or not: the read side reports the end). */
static void sts_fetch_after_write(void *arg, int status)
{
    struct sts_fetch *f = arg;
    if (f->s != NULL && status < 0 && status != UV_ECANCELED)
        sts_fetch_finish(f, STS_FAILED, HAMR_EIO, "write to %s: %s", f->remote,
                         uv_strerror(status));
}

/*
 * sts_fetch_after_handshake - the certificate names the policy host and
 * chains to the trust store: the request goes out. A failure is final
 * (never a policy, and no other address: RFC 8461 3.3).
 */
static void sts_fetch_after_handshake(void *data, int status)
{
    struct sts_fetch *f = data;
    struct sts *s = f->s;
    if (s == NULL)
        return;
    if (status != 0) {
        sts_fetch_finish(f, STS_FAILED, HAMR_EPROTO, "TLS with %s: %s", f->remote,
                         status == UV_EPROTO ? tls_stream_error(f->ts) : uv_strerror(status));
        return;
    }
    f->state = STS_FETCH_HTTP;
    /* RFC 9110 7.2: the port goes into Host when it is not the scheme's. */
    char port[8] = "";
    if (s->cfg.https_port != STS_PORT_DEFAULT)
        snprintf(port, sizeof(port), ":%u", s->cfg.https_port);
    int n = snprintf(f->req, sizeof(f->req),
                     "GET %s HTTP/1.1\r\nHost: %s%s\r\nUser-Agent: hamr\r\nAccept: text/plain\r\n"
                     "Connection: close\r\n\r\n",
                     sts_path, f->host, port);
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(f->req));
    f->req_len = (size_t)n;
    int rc = tls_stream_write(f->ts, f->req, f->req_len, sts_fetch_after_write, f);
    if (rc != 0)
        sts_fetch_finish(f, STS_FAILED, HAMR_EIO, "write to %s: %s", f->remote, uv_strerror(rc));
}

/* sts_fetch_alloc_cb - reads land in f's buffer. */
static void sts_fetch_alloc_cb(void *data, uv_buf_t *buf)
{
    struct sts_fetch *f = data;
    *buf = uv_buf_init(f->rbuf, sizeof(f->rbuf));
}

static void sts_fetch_after_body(struct sts_fetch *f);

/* sts_fetch_read_cb - response octets to the reader; its end, or the connection's, decides. */
static void sts_fetch_read_cb(void *data, ssize_t nread, const uv_buf_t *buf)
{
    struct sts_fetch *f = data;
    if (f->s == NULL || nread == 0)
        return;
    int rc;
    if (nread < 0) {
        if (nread != UV_EOF) {
            sts_fetch_finish(
                f, STS_FAILED, HAMR_EPROTO, "read from %s: %s", f->remote,
                nread == UV_EPROTO ? tls_stream_error(f->ts) : uv_strerror((int)nread));
            return;
        }
        rc = sts_http_eof(&f->http);
    } else {
        rc = sts_http_feed(&f->http, buf->base, (size_t)nread);
    }
    if (rc != 0) {
        sts_fetch_finish(f, STS_FAILED, rc, "https://%s%s: %s", f->host, sts_path, f->http.why);
        return;
    }
    if (f->http.state == STS_HTTP_DONE)
        sts_fetch_after_body(f);
}

/* sts_fetch_after_body - the body is complete: the policy, or why not. */
static void sts_fetch_after_body(struct sts_fetch *f)
{
    char why[160];
    if (sts_policy_parse(f->http.body, f->http.body_len, &f->res.policy, why, sizeof(why)) != 0) {
        sts_fetch_finish(f, STS_FAILED, HAMR_EINVAL, "policy of %s: %s", f->host, why);
        return;
    }
    sts_fetch_finish(f, STS_OK, 0, "mode %s, %zu mx, max_age %u", sts_mode_name(f->res.policy.mode),
                     f->res.policy.n_mx, f->res.policy.max_age);
}

/*
 * sts_domain_normalize - domain checked (net/dns's rules: letters, digits,
 * '-' and '_' in labels of 1 to 63; one trailing dot) and copied in lower
 * case without the dot into out (DNS_NAME_MAX + 1), short enough for
 * "_mta-sts." before it. 0 or HAMR_EINVAL.
 */
static int sts_domain_normalize(const char *domain, char *out)
{
    size_t len = strnlen(domain, DNS_NAME_MAX + 2), label = 0;
    if (len > 0 && domain[len - 1] == '.')
        len--;
    if (len == 0 || len + sizeof(sts_txt_prefix) - 1 > DNS_NAME_MAX)
        return HAMR_EINVAL;
    for (size_t i = 0; i < len; i++) {
        char c = domain[i];
        if (c == '.') {
            if (label == 0)
                return HAMR_EINVAL;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_') {
            if (++label > 63)
                return HAMR_EINVAL;
        } else {
            return HAMR_EINVAL;
        }
        out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    if (label == 0)
        return HAMR_EINVAL;
    out[len] = '\0';
    return 0;
}

/* sts_fetch_if_changed - see mta_sts.h. */
int sts_fetch_if_changed(struct sts *s,
                         const char *domain,
                         const char *known_id,
                         sts_fetch_cb cb,
                         void *arg,
                         struct sts_fetch **handle)
{
    if (s->closing)
        return HAMR_ESHUTDOWN;
    if (cb == NULL || (known_id != NULL && strlen(known_id) > STS_ID_MAX))
        return HAMR_EINVAL;
    struct sts_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return HAMR_ENOMEM;
    int rc = sts_domain_normalize(domain, f->res.domain);
    if (rc != 0) {
        free(f);
        return rc;
    }
    f->http.body = malloc(s->cfg.max_body);
    if (f->http.body == NULL) {
        free(f);
        return HAMR_ENOMEM;
    }
    f->http.max_body = s->cfg.max_body;
    f->cb = cb;
    f->cb_arg = arg;
    if (known_id != NULL)
        hamr_strlcpy(f->known_id, known_id, sizeof(f->known_id));
    snprintf(f->txt_name, sizeof(f->txt_name), "%s%s", sts_txt_prefix, f->res.domain);
    snprintf(f->host, sizeof(f->host), "%s%s", sts_host_prefix, f->res.domain);
    rc = dns_query(s->dns, f->txt_name, DNS_TYPE_TXT, sts_fetch_after_txt, f, &f->txtq);
    if (rc != 0) {
        free(f->http.body);
        free(f);
        return rc;
    }
    uv_timer_init(s->loop, &f->timer);
    f->timer.data = f;
    f->handles = 1;
    uv_timer_start(&f->timer, sts_fetch_timeout_cb, s->cfg.timeout_ms, 0);
    f->s = s;
    f->next = s->fetches;
    if (s->fetches != NULL)
        s->fetches->prev = f;
    s->fetches = f;
    if (handle != NULL)
        *handle = f;
    return 0;
}

/* sts_fetch - see mta_sts.h. */
int sts_fetch(struct sts *s,
              const char *domain,
              sts_fetch_cb cb,
              void *arg,
              struct sts_fetch **handle)
{
    return sts_fetch_if_changed(s, domain, NULL, cb, arg, handle);
}

/* sts_cancel - see mta_sts.h. */
void sts_cancel(struct sts_fetch *f)
{
    if (f != NULL)
        sts_fetch_end(f);
}

/* sts_new - see mta_sts.h. */
int sts_new(struct dns *dns, struct ssl_ctx_st *ctx, const struct sts_config *cfg, struct sts **out)
{
    *out = NULL;
    struct sts *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return HAMR_ENOMEM;
    s->dns = dns;
    s->loop = dns_loop(dns);
    s->cfg = *cfg;
    s->cfg.ca_file[sizeof(s->cfg.ca_file) - 1] = '\0';
    if (s->cfg.timeout_ms == 0)
        s->cfg.timeout_ms = STS_TIMEOUT_DEFAULT_MS;
    if (s->cfg.https_port == 0)
        s->cfg.https_port = STS_PORT_DEFAULT;
    if (s->cfg.max_body == 0 || s->cfg.max_body > STS_POLICY_MAX)
        s->cfg.max_body = STS_POLICY_MAX;
    if (ctx != NULL) {
        if (SSL_CTX_up_ref(ctx) != 1) {
            free(s);
            return HAMR_ENOMEM;
        }
        s->ctx = ctx;
    } else {
        char err[TLS_ERR_MAX];
        s->ctx = tls_client_ctx_new(s->cfg.ca_file, err, sizeof(err));
        if (s->ctx == NULL) {
            log_error("mta-sts: no TLS context: %s", err);
            free(s);
            return HAMR_EIO;
        }
    }
    *out = s;
    return 0;
}

/* sts_free - see mta_sts.h. */
void sts_free(struct sts *s)
{
    if (s == NULL || s->closing)
        return;
    s->closing = true;
    while (s->fetches != NULL)
        sts_fetch_finish(s->fetches, STS_TEMPFAIL, HAMR_ESHUTDOWN, "shutdown");
    SSL_CTX_free(s->ctx);
    free(s);
}
