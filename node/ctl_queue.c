/*
 * ctl_queue.c - what hamrctl queue and hamrctl show answer: QueueEntry
 * records built from the queue's messages, filtered, one bounded page at a
 * time.
 *
 * A page follows acceptance order (queue_foreach_after), which is the same
 * on every node, from the message after --after: finding that one is a
 * table lookup, so a page costs the messages it looks at, not the queue
 * before them. A page stops at its entry limit, at its byte bound (so that
 * the answer fits one control frame) or at its scan bound (so that a filter
 * matching little cannot walk a million messages), and names the last
 * message it looked at; the next page starts after that one.
 *
 * Owns: the page's entries. Borrows: the queue's messages, until the answer
 * is sent (the caller answers before the next apply). Errors: HAMR_EINVAL
 * (arguments), HAMR_ENOTFOUND (--after or show's id is not queued),
 * HAMR_ENOMEM.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "queue/queue.h"
#include "node/config.h"
#include "node/ctl_queue.h"
#include "net/smtp_ext.h"

void ctl_queue_page_init(struct ctl_queue_page *pg, uint64_t now_ms)
{
    *pg = (struct ctl_queue_page){.now_ms = now_ms,
                                  .limit = CTL_QUEUE_PAGE,
                                  .scan_max = CTL_QUEUE_SCAN_MAX,
                                  .bytes_max = CTL_QUEUE_PAGE_BYTES};
}

/* ctl_queue_rcpt_state - a recipient's state as hamrctl shows it and --state names it. */
static const char *ctl_queue_rcpt_state(const struct queue_rcpt *qr)
{
    switch (qr->state) {
        case QUEUE_RCPT_PENDING:
            return qr->attempts > 0 ? "deferred" : "pending";
        case QUEUE_RCPT_LEASED:
            return "active";
        case QUEUE_RCPT_DELIVERED:
            return "delivered";
        case QUEUE_RCPT_BOUNCED:
            return "bounced";
        case QUEUE_RCPT_EXPIRED:
            return "expired";
    }
    return "?";
}

/* ctl_queue_headers - the header block of a body (in memory or in the node's store), capped. */
static char *ctl_queue_headers(const struct queue *q, const struct queue_msg *m)
{
    const uint8_t *body;
    uint8_t *owned;
    size_t len = queue_body_head(q, m, CTL_QUEUE_HEADERS_MAX + 2, &body, &owned);
    size_t n = len;
    const uint8_t *end = len > 0 ? memmem(body, len, "\r\n\r\n", 4) : NULL;
    if (end != NULL)
        n = (size_t)(end - body) + 2;
    if (n > CTL_QUEUE_HEADERS_MAX)
        n = CTL_QUEUE_HEADERS_MAX;
    char *h = malloc(n + 1);
    if (h == NULL) {
        free(owned);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = body[i];
        h[i] = (c == '\r' || c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? (char)c : '?';
    }
    h[n] = '\0';
    free(owned);
    return h;
}

/* ctl_queue_match - m passes the filters of f. */
static bool ctl_queue_match(const struct ctl_queue_page *f, const struct queue_msg *m)
{
    if (f->older_than_ms && m->received_at_ms + f->older_than_ms > f->now_ms)
        return false;
    bool match_state = f->state == NULL || strcmp(f->state, "all") == 0;
    bool match_to = f->to == NULL;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        if (f->state != NULL) {
            if (strcmp(f->state, "held") == 0)
                match_state = match_state || m->held;
            else if (strcmp(f->state, ctl_queue_rcpt_state(qr)) == 0)
                match_state = true;
        }
        if (f->to != NULL) {
            const char *at = strrchr(qr->addr, '@');
            const char *dom = at ? at + 1 : qr->addr;
            size_t dl = strlen(dom), tl = strlen(f->to);
            if (dl >= tl && hamr_strncaseeq(dom + dl - tl, f->to, tl + 1) &&
                (dl == tl || dom[dl - tl - 1] == '.'))
                match_to = true;
        }
    }
    return match_state && match_to;
}

/* Room for show's texts of the envelope extensions, kept in the entry's own allocation. */
#define CTL_QUEUE_EXT_TEXT 192
#define CTL_QUEUE_DSN_TEXT (QUEUE_ORCPT_MAX + 64)

/* ctl_queue_ext_text - m's envelope extensions as show prints them, into out. */
static void ctl_queue_ext_text(const struct queue_msg *m, char *out, size_t outlen)
{
    const struct queue_ext *x = m->ext;
    snprintf(out, outlen, "%s%s%s%s%s%s", m->smtputf8 ? " SMTPUTF8" : "",
             m->requiretls ? " REQUIRETLS" : "", m->tls_optional ? " TLS-Required:No" : "",
             x != NULL && x->ret == QUEUE_RET_FULL   ? " RET=FULL"
             : x != NULL && x->ret == QUEUE_RET_HDRS ? " RET=HDRS"
                                                     : "",
             x != NULL && x->envid != NULL ? " ENVID=" : "",
             x != NULL && x->envid != NULL ? x->envid : "");
    if (out[0] == ' ')
        memmove(out, out + 1, strlen(out));
}

/* ctl_queue_dsn_text - recipient i's NOTIFY and ORCPT as show prints them, into out. */
static void ctl_queue_dsn_text(const struct queue_msg *m, size_t i, char *out, size_t outlen)
{
    char notify[64] = "";
    if (m->ext->notify[i] != 0)
        smtp_notify_format(m->ext->notify[i], notify, sizeof(notify));
    snprintf(out, outlen, "%s%s%s%s%s", notify[0] ? "NOTIFY=" : "", notify,
             notify[0] && m->ext->orcpt[i] ? " " : "", m->ext->orcpt[i] ? "ORCPT=" : "",
             m->ext->orcpt[i] ? m->ext->orcpt[i] : "");
}

/* ctl_queue_add - append the QueueEntry of m to f; 0 or HAMR_ENOMEM (in f->err too). */
static int ctl_queue_add(struct ctl_queue_page *f, const struct queue_msg *m)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        Hamr__QueueEntry **p = realloc(f->entries, cap * sizeof(*p));
        if (p == NULL) {
            f->err = HAMR_ENOMEM;
            return f->err;
        }
        f->entries = p;
        f->cap = cap;
    }
    Hamr__QueueEntry *qe = calloc(1, sizeof(*qe) + (f->headers ? CTL_QUEUE_EXT_TEXT : 0));
    Hamr__QueueRcpt **rs = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*rs));
    if (qe == NULL || rs == NULL) {
        free(qe);
        free(rs);
        f->err = HAMR_ENOMEM;
        return f->err;
    }
    hamr__queue_entry__init(qe);
    qe->queue_id = (char *)m->id;
    qe->sender = (char *)m->sender; /* borrowed: packed before the queue changes */
    qe->size = m->body_len;
    qe->received_at_ms = m->received_at_ms;
    qe->held = m->held;
    qe->is_dsn = m->is_dsn;
    qe->client_addr = (char *)m->origin->client_addr;
    qe->helo = (char *)m->origin->helo;
    qe->expires_at_ms = m->expires_at_ms;
    qe->rcpts = rs;
    if (f->headers) {
        qe->extensions = (char *)(qe + 1);
        ctl_queue_ext_text(m, qe->extensions, CTL_QUEUE_EXT_TEXT);
    }
    bool dsn = f->headers && m->ext != NULL;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        Hamr__QueueRcpt *x = calloc(1, sizeof(*x) + (dsn ? CTL_QUEUE_DSN_TEXT : 0));
        if (x == NULL) {
            f->err = HAMR_ENOMEM;
            break;
        }
        hamr__queue_rcpt__init(x);
        if (dsn) {
            x->dsn = (char *)(x + 1);
            ctl_queue_dsn_text(m, i, x->dsn, CTL_QUEUE_DSN_TEXT);
        }
        x->addr = (char *)qr->addr;
        x->state = (char *)ctl_queue_rcpt_state(qr);
        x->attempts = qr->attempts;
        x->next_attempt_ms = qr->next_attempt_ms;
        const struct queue_tried *t = queue_rcpt_tried(qr);
        x->last_error = (char *)(t->error ? t->error : "");
        x->tls_policy = (char *)(t->tls_policy ? t->tls_policy : "");
        x->tls = (char *)(t->tls ? t->tls : "");
        rs[qe->n_rcpts++] = x;
    }
    if (f->headers)
        qe->headers = ctl_queue_headers(f->q, m);
    f->entries[f->n++] = qe;
    /* The entry's field tag and length prefix take at most 11 bytes more. */
    f->bytes += hamr__queue_entry__get_packed_size(qe) + 11;
    return f->err;
}

/*
 * ctl_queue_collect - queue_foreach_after callback: one page of matching
 * entries. It stops at the message that would make the page one entry too
 * many or too large, or that is one past the scan bound, and sets
 * next_after to the message before it, so that the next page starts there
 * without skipping anything.
 */
static int ctl_queue_collect(void *arg, const struct queue_msg *m)
{
    struct ctl_queue_page *f = arg;
    if (++f->scanned > f->scan_max) {
        f->next_after = f->last;
        return 1;
    }
    if (ctl_queue_match(f, m)) {
        if (f->n == f->limit || f->bytes >= f->bytes_max) {
            f->next_after = f->last;
            return 1;
        }
        if (ctl_queue_add(f, m) != 0)
            return 1;
    }
    f->last = m->id;
    return 0;
}

/* ctl_queue_page_free - release what ctl_queue_collect built. */
void ctl_queue_page_free(struct ctl_queue_page *f)
{
    for (size_t i = 0; i < f->n; i++) {
        Hamr__QueueEntry *qe = f->entries[i];
        for (size_t j = 0; j < qe->n_rcpts; j++)
            free(qe->rcpts[j]);
        free(qe->rcpts);
        if (f->headers)
            free(qe->headers);
        free(qe);
    }
    free(f->entries);
}

int ctl_queue_parse(char **args,
                    size_t n_args,
                    struct ctl_queue_page *pg,
                    const char **after,
                    char *err,
                    size_t err_len)
{
    for (size_t i = 0; i < n_args; i += 2) {
        const char *a = args[i];
        const char *v = i + 1 < n_args ? args[i + 1] : NULL;
        if (v == NULL) {
            snprintf(err, err_len, "queue: %s needs a value", a);
            return HAMR_EINVAL;
        }
        if (strcmp(a, "--state") == 0) {
            static const char *const ok[] = {"all", "pending", "deferred", "active", "held"};
            bool found = false;
            for (size_t k = 0; k < HAMR_ARRAY_LEN(ok); k++)
                found = found || strcmp(v, ok[k]) == 0;
            if (!found) {
                snprintf(err, err_len,
                         "queue: unknown state \"%s\" (all, pending, deferred, active, held)", v);
                return HAMR_EINVAL;
            }
            pg->state = v;
        } else if (strcmp(a, "--to") == 0) {
            pg->to = v;
        } else if (strcmp(a, "--older-than") == 0) {
            if (config_parse_duration(v, &pg->older_than_ms) != 0) {
                snprintf(err, err_len, "queue: not a duration: \"%s\"", v);
                return HAMR_EINVAL;
            }
        } else if (strcmp(a, "--limit") == 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || n == 0 ||
                n > CTL_QUEUE_PAGE_MAX) {
                snprintf(err, err_len, "queue: --limit takes 1 to %d, not \"%s\"",
                         CTL_QUEUE_PAGE_MAX, v);
                return HAMR_EINVAL;
            }
            pg->limit = (size_t)n;
        } else if (strcmp(a, "--after") == 0) {
            *after = v;
        } else {
            snprintf(err, err_len, "queue: unknown option \"%s\"", a);
            return HAMR_EINVAL;
        }
    }
    return 0;
}

int ctl_queue_list(const struct queue *q,
                   struct ctl_queue_page *pg,
                   const char *after,
                   char *err,
                   size_t err_len)
{
    pg->last = after;
    if (queue_foreach_after(q, after, ctl_queue_collect, pg) != 0) {
        snprintf(err, err_len, "queue: %s is no longer queued; list again without --after", after);
        return HAMR_ENOTFOUND;
    }
    if (pg->err != 0)
        snprintf(err, err_len, "queue: %s", hamr_strerror(pg->err));
    return pg->err;
}

int ctl_queue_show(const struct queue *q, const char *id, struct ctl_queue_page *pg)
{
    const struct queue_msg *m = queue_find(q, id);
    if (m == NULL)
        return HAMR_ENOTFOUND;
    pg->headers = true;
    pg->q = q;
    return ctl_queue_add(pg, m);
}
