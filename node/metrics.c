/*
 * metrics.c - the metrics registry and its Prometheus text rendering
 * (exposition format 0.0.4), plus the table of hamr's metrics.
 *
 * Owns: one array of series and one array of histogram bucket counts, both
 * allocated in metrics_new; updates only write into them. Histogram buckets
 * are stored per bucket and made cumulative when rendered, so an observation
 * touches one bucket.
 *
 * Output, per family in table order:
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> counter|gauge|histogram
 *   <name>[{<label>="<value, with \ " and newline escaped>"}] <value>
 * and for a histogram <name>_bucket{le="<bound>"} (cumulative, ending with
 * le="+Inf"), <name>_sum and <name>_count. Values are integers for counters
 * and the shortest text that reads back to the same double otherwise; +Inf,
 * -Inf and NaN are spelled as Prometheus spells them.
 *
 * Errors: HAMR_EINVAL (bad def), HAMR_ENOMEM, HAMR_ETOOBIG (render over the
 * buffer's limit).
 *
 * Security: label values set at run time (the build version) are escaped;
 * nothing here reads network input.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"

#include "net/dkim.h"
#include "node/metrics.h"
#include "node/peer_policy.h"

/* metrics_series - one time series; which fields count depends on the type. */
struct metrics_series {
    uint64_t count; /* counter value; histogram observation count */
    double value;   /* gauge value; histogram sum */
};

/* metrics_family - where a def's series live. */
struct metrics_family {
    const struct metrics_def *def;
    size_t first; /* index of its first series */
    size_t n_series;
    uint64_t *buckets; /* histogram: n_buckets + 1 counts, the last is +Inf */
    char label_value[METRICS_LABEL_VALUE_MAX]; /* run-time label value */
    bool hidden;                               /* metrics_hide: left out of the render */
};

struct metrics {
    size_t n_families;
    struct metrics_family *families;
    struct metrics_series *series;
    uint64_t *bucket_store;
};

/* metrics_name_ok - the Prometheus metric and label name syntax. */
static bool metrics_name_ok(const char *s, bool colon)
{
    if (s == NULL || *s == '\0')
        return false;
    for (const char *p = s; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* metrics_def_check - a def's fields agree with its type; returns its series count or 0. */
static size_t metrics_def_check(const struct metrics_def *d)
{
    if (!metrics_name_ok(d->name, true) || d->help == NULL)
        return 0;
    if (d->type == METRICS_HISTOGRAM) {
        if (d->label != NULL || d->buckets == NULL || d->n_buckets == 0)
            return 0;
        for (size_t i = 0; i < d->n_buckets; i++)
            if (!isfinite(d->buckets[i]) || (i > 0 && d->buckets[i] <= d->buckets[i - 1]))
                return 0;
        return 1;
    }
    if (d->type != METRICS_COUNTER && d->type != METRICS_GAUGE)
        return 0;
    if (d->label == NULL)
        return d->values == NULL ? 1 : 0;
    /* "le" belongs to histograms; "__" prefixes are Prometheus's own. */
    if (!metrics_name_ok(d->label, false) || strncmp(d->label, "__", 2) == 0 ||
        strcmp(d->label, "le") == 0)
        return 0;
    if (d->values == NULL)
        return 1;
    size_t n = 0;
    while (d->values[n] != NULL)
        n++;
    return n;
}

/* metrics_new - build the registry for defs. */
int metrics_new(const struct metrics_def *defs, size_t n, struct metrics **out)
{
    size_t n_series = 0, n_buckets = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = metrics_def_check(&defs[i]);
        if (k == 0)
            return HAMR_EINVAL;
        n_series += k;
        if (defs[i].type == METRICS_HISTOGRAM)
            n_buckets += defs[i].n_buckets + 1;
    }
    struct metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return HAMR_ENOMEM;
    m->families = calloc(n > 0 ? n : 1, sizeof(*m->families));
    m->series = calloc(n_series > 0 ? n_series : 1, sizeof(*m->series));
    m->bucket_store = calloc(n_buckets > 0 ? n_buckets : 1, sizeof(*m->bucket_store));
    if (m->families == NULL || m->series == NULL || m->bucket_store == NULL) {
        metrics_free(m);
        return HAMR_ENOMEM;
    }
    m->n_families = n;
    size_t s = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        struct metrics_family *f = &m->families[i];
        f->def = &defs[i];
        f->first = s;
        f->n_series = metrics_def_check(&defs[i]);
        s += f->n_series;
        if (defs[i].type == METRICS_HISTOGRAM) {
            f->buckets = &m->bucket_store[b];
            b += defs[i].n_buckets + 1;
        }
    }
    *out = m;
    return 0;
}

/* metrics_free - release the registry. */
struct metrics *metrics_free(struct metrics *m)
{
    if (m == NULL)
        return NULL;
    free(m->families);
    free(m->series);
    free(m->bucket_store);
    free(m);
    return NULL;
}

/* metrics_at - the series (id, label) of a family of type t; asserts the indexes. */
static struct metrics_series *metrics_at(const struct metrics *m,
                                         unsigned id,
                                         unsigned label,
                                         enum metrics_type t)
{
    HAMR_ASSERT(id < m->n_families);
    const struct metrics_family *f = &m->families[id];
    HAMR_ASSERT(f->def->type == t && label < f->n_series);
    return &m->series[f->first + label];
}

/* metrics_inc - one more on an unlabelled counter. */
void metrics_inc(struct metrics *m, unsigned id)
{
    metrics_at(m, id, 0, METRICS_COUNTER)->count++;
}

/* metrics_inc_label - one more on a labelled counter. */
void metrics_inc_label(struct metrics *m, unsigned id, unsigned label)
{
    metrics_at(m, id, label, METRICS_COUNTER)->count++;
}

/* metrics_counter_add - n more on a counter. */
void metrics_counter_add(struct metrics *m, unsigned id, unsigned label, uint64_t n)
{
    metrics_at(m, id, label, METRICS_COUNTER)->count += n;
}

/* metrics_counter_set - a counter kept elsewhere. */
void metrics_counter_set(struct metrics *m, unsigned id, unsigned label, uint64_t v)
{
    metrics_at(m, id, label, METRICS_COUNTER)->count = v;
}

/* metrics_gauge_set - set a gauge. */
void metrics_gauge_set(struct metrics *m, unsigned id, unsigned label, double v)
{
    metrics_at(m, id, label, METRICS_GAUGE)->value = v;
}

/* metrics_gauge_add - move a gauge by d. */
void metrics_gauge_add(struct metrics *m, unsigned id, unsigned label, double d)
{
    metrics_at(m, id, label, METRICS_GAUGE)->value += d;
}

/* metrics_observe - one sample into the first bucket whose bound is >= v. */
void metrics_observe(struct metrics *m, unsigned id, double v)
{
    struct metrics_series *s = metrics_at(m, id, 0, METRICS_HISTOGRAM);
    const struct metrics_family *f = &m->families[id];
    size_t i = 0;
    /* A NaN sample compares false everywhere and lands in +Inf only. */
    while (i < f->def->n_buckets && !(v <= f->def->buckets[i]))
        i++;
    f->buckets[i]++;
    s->count++;
    s->value += v;
}

/* metrics_set_label - the run-time label value of a one-series labelled family. */
void metrics_set_label(struct metrics *m, unsigned id, const char *value)
{
    HAMR_ASSERT(id < m->n_families);
    struct metrics_family *f = &m->families[id];
    HAMR_ASSERT(f->def->label != NULL && f->def->values == NULL);
    hamr_strlcpy(f->label_value, value, sizeof(f->label_value));
}

/* metrics_hide - show or hide a whole family. */
void metrics_hide(struct metrics *m, unsigned id, bool hidden)
{
    HAMR_ASSERT(id < m->n_families);
    m->families[id].hidden = hidden;
}

/* metrics_label_index - position of value in id's fixed label set. */
int metrics_label_index(const struct metrics *m, unsigned id, const char *value)
{
    HAMR_ASSERT(id < m->n_families);
    const struct metrics_def *d = m->families[id].def;
    if (d->values == NULL)
        return -1;
    for (int i = 0; d->values[i] != NULL; i++)
        if (strcmp(d->values[i], value) == 0)
            return i;
    return -1;
}

/* metrics_counter - read a counter. */
uint64_t metrics_counter(const struct metrics *m, unsigned id, unsigned label)
{
    return metrics_at(m, id, label, METRICS_COUNTER)->count;
}

/* metrics_gauge - read a gauge. */
double metrics_gauge(const struct metrics *m, unsigned id, unsigned label)
{
    return metrics_at(m, id, label, METRICS_GAUGE)->value;
}

/* metrics_hist_count - observations in a histogram. */
uint64_t metrics_hist_count(const struct metrics *m, unsigned id)
{
    return metrics_at(m, id, 0, METRICS_HISTOGRAM)->count;
}

/* ------------------------------------------------------------------------ */
/* Rendering.                                                               */
/* ------------------------------------------------------------------------ */

/* metrics_puts - append a C string. */
static int metrics_puts(struct buf *out, const char *s)
{
    return buf_append(out, s, strlen(s));
}

/*
 * metrics_escape - append s with \ and newline escaped, and " too when quote
 * (label values); HELP text leaves " alone, as the format says.
 */
static int metrics_escape(struct buf *out, const char *s, bool quote)
{
    int rv = 0;
    const char *run = s;
    for (const char *p = s; *p != '\0' && rv == 0; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (quote && *p == '"')
            esc = "\\\"";
        if (esc == NULL)
            continue;
        rv = buf_append(out, run, (size_t)(p - run));
        if (rv == 0)
            rv = metrics_puts(out, esc);
        run = p + 1;
    }
    if (rv == 0)
        rv = metrics_puts(out, run);
    return rv;
}

/* metrics_fmt_double - the shortest text that reads back as v. */
static void metrics_fmt_double(char *out, size_t len, double v)
{
    if (isnan(v)) {
        hamr_strlcpy(out, "NaN", len);
        return;
    }
    if (isinf(v)) {
        hamr_strlcpy(out, v > 0 ? "+Inf" : "-Inf", len);
        return;
    }
    /* Whole numbers (counts, bytes, indexes) without an exponent: %g would
     * write 10 as 1e+01. Up to 2^53 every integer is exact. */
    if (v >= -9007199254740992.0 && v <= 9007199254740992.0 && (double)(int64_t)v == v) {
        snprintf(out, len, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, len, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* metrics_head - the HELP and TYPE lines of a family. */
static int metrics_head(struct buf *out, const struct metrics_def *d)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    int rv = metrics_puts(out, "# HELP ");
    if (rv == 0)
        rv = metrics_puts(out, d->name);
    if (rv == 0)
        rv = metrics_puts(out, " ");
    if (rv == 0)
        rv = metrics_escape(out, d->help, false);
    if (rv == 0)
        rv = metrics_puts(out, "\n# TYPE ");
    if (rv == 0)
        rv = metrics_puts(out, d->name);
    if (rv == 0)
        rv = metrics_puts(out, " ");
    if (rv == 0)
        rv = metrics_puts(out, type_names[d->type]);
    if (rv == 0)
        rv = metrics_puts(out, "\n");
    return rv;
}

/*
 * metrics_sample - one line: name suffix {label="value"} text. label may be
 * NULL for no label set.
 */
static int metrics_sample(struct buf *out,
                          const char *name,
                          const char *suffix,
                          const char *label,
                          const char *value,
                          const char *text)
{
    int rv = metrics_puts(out, name);
    if (rv == 0)
        rv = metrics_puts(out, suffix);
    if (rv == 0 && label != NULL) {
        rv = metrics_puts(out, "{");
        if (rv == 0)
            rv = metrics_puts(out, label);
        if (rv == 0)
            rv = metrics_puts(out, "=\"");
        if (rv == 0)
            rv = metrics_escape(out, value, true);
        if (rv == 0)
            rv = metrics_puts(out, "\"}");
    }
    if (rv == 0)
        rv = metrics_puts(out, " ");
    if (rv == 0)
        rv = metrics_puts(out, text);
    if (rv == 0)
        rv = metrics_puts(out, "\n");
    return rv;
}

/* metrics_render_family - HELP, TYPE and every series of one family. */
static int metrics_render_family(const struct metrics *m,
                                 const struct metrics_family *f,
                                 struct buf *out)
{
    const struct metrics_def *d = f->def;
    char text[64];
    int rv = metrics_head(out, d);
    if (rv != 0)
        return rv;
    if (d->type == METRICS_HISTOGRAM) {
        const struct metrics_series *s = &m->series[f->first];
        uint64_t cum = 0;
        for (size_t i = 0; i <= d->n_buckets && rv == 0; i++) {
            char le[32];
            if (i < d->n_buckets)
                metrics_fmt_double(le, sizeof(le), d->buckets[i]);
            else
                hamr_strlcpy(le, "+Inf", sizeof(le));
            cum += f->buckets[i];
            snprintf(text, sizeof(text), "%llu", (unsigned long long)cum);
            rv = metrics_sample(out, d->name, "_bucket", "le", le, text);
        }
        if (rv == 0) {
            metrics_fmt_double(text, sizeof(text), s->value);
            rv = metrics_sample(out, d->name, "_sum", NULL, NULL, text);
        }
        if (rv == 0) {
            snprintf(text, sizeof(text), "%llu", (unsigned long long)s->count);
            rv = metrics_sample(out, d->name, "_count", NULL, NULL, text);
        }
        return rv;
    }
    for (size_t i = 0; i < f->n_series && rv == 0; i++) {
        const struct metrics_series *s = &m->series[f->first + i];
        if (d->type == METRICS_COUNTER)
            snprintf(text, sizeof(text), "%llu", (unsigned long long)s->count);
        else
            metrics_fmt_double(text, sizeof(text), s->value);
        const char *value = d->values != NULL ? d->values[i] : f->label_value;
        rv = metrics_sample(out, d->name, "", d->label, value, text);
    }
    return rv;
}

/* metrics_render - the whole registry, but hidden families, in exposition format 0.0.4. */
int metrics_render(const struct metrics *m, struct buf *out)
{
    for (size_t i = 0; i < m->n_families; i++) {
        if (m->families[i].hidden)
            continue;
        int rv = metrics_render_family(m, &m->families[i], out);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The hamr metric set.                                                     */
/* ------------------------------------------------------------------------ */

/*
 * The reply codes hamr's SMTP server can send as a refusal (net/smtpd_reply.c)
 * plus the other 4xx/5xx codes of RFC 5321 4.2.3, so that a new table row
 * shows up under its own code. The last label is "other".
 */
static const int metrics_hamr_reject_codes[] = {421, 450, 451, 452, 454, 455, 500, 501, 502, 503,
                                                504, 530, 535, 550, 551, 552, 553, 554, 555};
/* The results of METRICS_DNS_ANSWERS, in the order of enum dns_status. */
static const char *const metrics_hamr_dns_results[] = {"ok", "nxdomain", "nodata", "tempfail",
                                                       NULL};

/* The results of METRICS_DANE, in the order relay_metrics_fill sets them. */
static const char *const metrics_hamr_dane_results[] = {"verified", "failed", "unusable", NULL};

/* The sources of METRICS_TLS_POLICY_SOURCE, in the order of enum metrics_hamr_tls_source. */
static const char *const metrics_hamr_tls_sources[] = {"default", "domain", "dane", "mta_sts",
                                                       NULL};

/* The algorithms of METRICS_DKIM_SIGNED and _FAILURES, in the order of enum dkim_alg. */
static const char *const metrics_hamr_dkim_algs[] = {"rsa", "ed25519", NULL};
_Static_assert(DKIM_ALG_RSA_SHA256 == 0 && DKIM_ALG_ED25519_SHA256 == 1 && DKIM_ALG_COUNT == 2,
               "metrics_hamr_dkim_algs follows enum dkim_alg");

static const char *const metrics_hamr_reject_labels[] = {
    "421", "450", "451", "452", "454", "455", "500", "501", "502",   "503", "504",
    "530", "535", "550", "551", "552", "553", "554", "555", "other", NULL};
static const char *const metrics_hamr_states[] = {"pending", "deferred", "active", "held", NULL};
/* The reasons of node/peer_policy.h, in its order (after "ok"). */
static const char *const metrics_hamr_refusals[] = {"ok",   "kind",  "identity", "envelope",
                                                    "size", "lease", NULL};
_Static_assert(PEER_POLICY_REASONS == 6 && PEER_POLICY_LEASE == 5,
               "metrics_hamr_refusals follows enum peer_policy_reason");
static const char *const metrics_hamr_raft_port[] = {"accepted", "refused",      "timed_out",
                                                     "over_cap", "tls",          "identity",
                                                     "out_tls",  "out_identity", NULL};
_Static_assert(METRICS_RAFT_PORT_OUT_IDENTITY == 7,
               "metrics_hamr_raft_port follows enum metrics_hamr_raft_port");
static const char *const metrics_hamr_peer_port[] = {
    "accepted", "tls", "identity", "timed_out", "out_tls", "out_identity", NULL};
_Static_assert(METRICS_PEER_PORT_OUT_IDENTITY == 5,
               "metrics_hamr_peer_port follows enum metrics_hamr_peer_port");
static const char *const metrics_hamr_control_refusals[] = {"tls", "identity", "timed_out", NULL};
_Static_assert(METRICS_CONTROL_REFUSED_TIMED_OUT == 2,
               "metrics_hamr_control_refusals follows enum metrics_hamr_control_refusal");
static const char *const metrics_hamr_certs[] = {"node", "ca", NULL};
_Static_assert(METRICS_CERT_CA == 1, "metrics_hamr_certs follows enum metrics_hamr_cert");
static const char *const metrics_hamr_outcomes[] = {"delivered", "deferred", "bounced", "expired",
                                                    NULL};
/* Commit latency, 1 ms to 10 s: a LAN commit is a few ms, a slow disk or a
 * cross-site quorum tens to hundreds, and the proposal timeout is 30 s. */
static const double metrics_hamr_commit_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                     0.25,  0.5,    1,     2.5,  5,     10};

#define METRICS_PLAIN(n, h, t)                \
    {                                         \
        .name = (n), .help = (h), .type = (t) \
    }
#define METRICS_LABELLED(n, h, t, l, v)                                    \
    {                                                                      \
        .name = (n), .help = (h), .type = (t), .label = (l), .values = (v) \
    }

const struct metrics_def metrics_hamr_defs[] = {
    [METRICS_SESSIONS_OPEN] =
        METRICS_PLAIN("hamr_smtp_sessions_open", "SMTP sessions open now.", METRICS_GAUGE),
    [METRICS_SESSIONS_TOTAL] =
        METRICS_PLAIN("hamr_smtp_sessions_total", "SMTP sessions accepted.", METRICS_COUNTER),
    [METRICS_MESSAGES_ACCEPTED] = METRICS_PLAIN("hamr_messages_accepted_total",
                                                "Messages answered 250 after a committed Enqueue.",
                                                METRICS_COUNTER),
    [METRICS_SMTP_REJECTS] = METRICS_LABELLED("hamr_smtp_rejects_total",
                                              "SMTP 4xx and 5xx replies by reply code.",
                                              METRICS_COUNTER,
                                              "code",
                                              metrics_hamr_reject_labels),
    [METRICS_COMMIT_SECONDS] = {.name = "hamr_commit_latency_seconds",
                                .help = "Time from submitting a message to its commit.",
                                .type = METRICS_HISTOGRAM,
                                .buckets = metrics_hamr_commit_buckets,
                                .n_buckets = HAMR_ARRAY_LEN(metrics_hamr_commit_buckets)},
    [METRICS_QUEUE_MESSAGES] = METRICS_LABELLED("hamr_queue_messages",
                                                "Messages in the replicated queue by state.",
                                                METRICS_GAUGE,
                                                "state",
                                                metrics_hamr_states),
    [METRICS_QUEUE_RCPTS] = METRICS_LABELLED("hamr_queue_recipients",
                                             "Recipients in the replicated queue by state.",
                                             METRICS_GAUGE,
                                             "state",
                                             metrics_hamr_states),
    [METRICS_DELIVERIES] = METRICS_LABELLED("hamr_deliveries_total",
                                            "Delivery outcomes recorded, by outcome.",
                                            METRICS_COUNTER,
                                            "outcome",
                                            metrics_hamr_outcomes),
    [METRICS_RETRIES] = METRICS_PLAIN("hamr_delivery_retries_total",
                                      "Delivery attempts after a deferral.",
                                      METRICS_COUNTER),
    [METRICS_DUPLICATE_WINDOWS] =
        METRICS_PLAIN("hamr_duplicate_windows_total",
                      "Deliveries whose outcome was lost after the attempt (possible duplicates).",
                      METRICS_COUNTER),
    [METRICS_FORWARDED] = METRICS_PLAIN("hamr_forwarded_proposals_total",
                                        "Proposals forwarded to the leader.",
                                        METRICS_COUNTER),
    [METRICS_RESOLVED] = METRICS_PLAIN("hamr_unknown_outcomes_resolved_total",
                                       "Unknown proposal outcomes resolved by queue id.",
                                       METRICS_COUNTER),
    [METRICS_PEER_REFUSED] = METRICS_LABELLED("hamr_peer_refused_total",
                                              "Entries another node forwarded and this leader "
                                              "refused (node/peer_policy.h), by reason.",
                                              METRICS_COUNTER,
                                              "reason",
                                              metrics_hamr_refusals),
    [METRICS_RAFT_PORT] = METRICS_LABELLED("hamr_raft_port_connections_total",
                                           "Raft connections: inbound handed to raft, refused "
                                           "(malformed), timed out, over the cap, failed TLS, "
                                           "wrong identity; outbound failed TLS, wrong identity.",
                                           METRICS_COUNTER,
                                           "event",
                                           metrics_hamr_raft_port),
    [METRICS_PEER_PORT] = METRICS_LABELLED("hamr_peer_port_connections_total",
                                           "Peer connections: inbound identified by their hello "
                                           "(with cluster TLS, as their certificate's node), "
                                           "failed TLS (or not a node's certificate), hello "
                                           "naming another node than the certificate, no "
                                           "handshake and hello in time; outbound failed TLS, "
                                           "server not the node meant.",
                                           METRICS_COUNTER,
                                           "event",
                                           metrics_hamr_peer_port),
    [METRICS_CONTROL_REFUSED] = METRICS_LABELLED("hamr_control_refused_total",
                                                 "TCP control connections refused: the TLS "
                                                 "handshake failed (no certificate, another CA), "
                                                 "the certificate names no operator, or no "
                                                 "handshake and request came in time.",
                                                 METRICS_COUNTER,
                                                 "reason",
                                                 metrics_hamr_control_refusals),
    [METRICS_PKI_DAYS_LEFT] = METRICS_LABELLED(
        "hamr_cluster_tls_days_left",
        "Whole days until a cluster certificate expires, rounded down (negative once expired): "
        "this node's (cert=\"node\") or the cluster CA's (cert=\"ca\"). Absent in plaintext.",
        METRICS_GAUGE,
        "cert",
        metrics_hamr_certs),
    [METRICS_PKI_NOT_AFTER] =
        METRICS_LABELLED("hamr_cluster_tls_not_after_seconds",
                         "When a cluster certificate expires (its notAfter), in Unix seconds: "
                         "this node's or the cluster CA's. Absent in plaintext.",
                         METRICS_GAUGE,
                         "cert",
                         metrics_hamr_certs),
    [METRICS_PKI_RELOADS] =
        METRICS_PLAIN("hamr_cluster_tls_reloads_total",
                      "Successful reloads of the cluster CA, certificate and key (SIGHUP). "
                      "Absent in plaintext.",
                      METRICS_COUNTER),
    [METRICS_METRICS_REFUSED] = METRICS_LABELLED("hamr_metrics_refused_total",
                                                 "Connections to the TLS metrics listener "
                                                 "refused: the TLS handshake failed (no "
                                                 "certificate, another CA, not TLS), or the "
                                                 "certificate names no operator.",
                                                 METRICS_COUNTER,
                                                 "reason",
                                                 metrics_hamr_control_refusals),
    [METRICS_RAFT_TERM] = METRICS_PLAIN("hamr_raft_term", "Current raft term.", METRICS_GAUGE),
    [METRICS_RAFT_COMMIT_INDEX] =
        METRICS_PLAIN("hamr_raft_commit_index", "Raft commit index.", METRICS_GAUGE),
    [METRICS_RAFT_APPLIED_INDEX] =
        METRICS_PLAIN("hamr_raft_applied_index", "Raft index applied to the queue.", METRICS_GAUGE),
    [METRICS_RAFT_IS_LEADER] =
        METRICS_PLAIN("hamr_raft_is_leader", "1 if this node is the raft leader.", METRICS_GAUGE),
    [METRICS_RAFT_LEADER_CHANGES] = METRICS_PLAIN("hamr_raft_leader_changes_total",
                                                  "Leader changes seen by this node.",
                                                  METRICS_COUNTER),
    [METRICS_DISK_FREE_BYTES] = METRICS_PLAIN("hamr_disk_free_bytes",
                                              "Free bytes on the data directory's file system.",
                                              METRICS_GAUGE),
    [METRICS_DRAINING] =
        METRICS_PLAIN("hamr_draining", "1 while the node is draining.", METRICS_GAUGE),
    [METRICS_QUEUE_BYTES] = METRICS_PLAIN("hamr_queue_bytes",
                                          "Sum of the message bodies in the replicated queue.",
                                          METRICS_GAUGE),
    [METRICS_QUEUE_LIMIT_MSGS] = METRICS_PLAIN("hamr_queue_limit_messages",
                                               "[storage] queue_max_messages: messages the "
                                               "cluster queues before MAIL gets 452 (0: no limit).",
                                               METRICS_GAUGE),
    [METRICS_QUEUE_LIMIT_BYTES] = METRICS_PLAIN("hamr_queue_limit_bytes",
                                                "[storage] queue_max_bytes: body bytes the cluster "
                                                "queues before MAIL gets 452 (0: no limit).",
                                                METRICS_GAUGE),
    [METRICS_QUEUE_FULL] = METRICS_PLAIN("hamr_queue_full",
                                         "1 while the replicated queue is at a queue limit and "
                                         "MAIL gets 452 4.3.1 on every node.",
                                         METRICS_GAUGE),
    [METRICS_BODIES_MISSING] = METRICS_PLAIN("hamr_bodies_missing",
                                             "Queued messages whose body this node lacks and "
                                             "is fetching from its peers.",
                                             METRICS_GAUGE),
    [METRICS_BODY_STORE_BYTES] = METRICS_PLAIN("hamr_body_store_bytes",
                                               "Size of the body store's segment files.",
                                               METRICS_GAUGE),
    [METRICS_BODY_MEMORY_BYTES] = METRICS_PLAIN("hamr_body_memory_bytes",
                                                "Bodies applied in the last second, still in "
                                                "memory and not yet written to the body store.",
                                                METRICS_GAUGE),
    [METRICS_BODY_STORE_SEGMENTS] = METRICS_PLAIN("hamr_body_store_segments",
                                                  "Segment files of the body store.",
                                                  METRICS_GAUGE),
    [METRICS_BODY_STORE_SYNCS] = METRICS_PLAIN("hamr_body_store_syncs_total",
                                               "Syncs of the body store to disk.",
                                               METRICS_COUNTER),
    [METRICS_BODY_READ_ERRORS] = METRICS_PLAIN("hamr_body_read_errors_total",
                                               "Bodies found unreadable or corrupt in the store "
                                               "(each is fetched again from a peer).",
                                               METRICS_COUNTER),
    [METRICS_BODIES_FETCHED] =
        METRICS_PLAIN("hamr_bodies_fetched_total", "Bodies fetched from peers.", METRICS_COUNTER),
    [METRICS_BODY_FETCH_CORRUPT] = METRICS_PLAIN("hamr_body_fetch_corrupt_total",
                                                 "Bodies received from a peer whose SHA-256 did "
                                                 "not match.",
                                                 METRICS_COUNTER),
    [METRICS_DESTS_SUSPENDED] = METRICS_PLAIN("hamr_destinations_suspended",
                                              "Next hops this leader does not try for now: "
                                              "their last attempt got no SMTP session.",
                                              METRICS_GAUGE),
    [METRICS_SUSPENSIONS] = METRICS_PLAIN("hamr_destination_suspensions_total",
                                          "Next hops suspended after an attempt got no SMTP "
                                          "session.",
                                          METRICS_COUNTER),
    [METRICS_DNS_ANSWERS] = METRICS_LABELLED("hamr_dns_answers_total",
                                             "DNS lookups of next hops answered, by result: "
                                             "records, the name does not exist, no record of "
                                             "the type, a temporary failure.",
                                             METRICS_COUNTER,
                                             "result",
                                             metrics_hamr_dns_results),
    [METRICS_DNS_CACHE_HITS] = METRICS_PLAIN("hamr_dns_cache_hits_total",
                                             "DNS lookups answered from the cache.",
                                             METRICS_COUNTER),
    [METRICS_DNS_SENT] = METRICS_PLAIN("hamr_dns_queries_sent_total",
                                       "DNS queries sent to a server.",
                                       METRICS_COUNTER),
    [METRICS_DNS_CACHE_ENTRIES] =
        METRICS_PLAIN("hamr_dns_cache_entries", "Answers in the DNS cache.", METRICS_GAUGE),
    [METRICS_DANE] = METRICS_LABELLED("hamr_dane_total",
                                      "DANE (tls_policy dane, dane-only) by result: TLS "
                                      "sessions authenticated by a TLSA record, attempts "
                                      "deferred at a host with TLSA records (no STARTTLS, "
                                      "no match), attempts deferred before connecting (no "
                                      "usable host).",
                                      METRICS_COUNTER,
                                      "result",
                                      metrics_hamr_dane_results),
    [METRICS_DELIVERY_CONNS] = METRICS_PLAIN("hamr_delivery_connections_total",
                                             "Connections opened to next hops (each address "
                                             "tried counts).",
                                             METRICS_COUNTER),
    [METRICS_TLS_POLICY_SOURCE] = METRICS_LABELLED("hamr_tls_policy_deliveries_total",
                                                   "Delivery attempts by the source of their "
                                                   "TLS policy: [delivery] tls_policy, a "
                                                   "[tls_policy] entry, DANE, MTA-STS.",
                                                   METRICS_COUNTER,
                                                   "source",
                                                   metrics_hamr_tls_sources),
    [METRICS_DKIM_SIGNED] = METRICS_LABELLED("hamr_dkim_signed_total",
                                             "Messages DKIM-signed on acceptance, by key "
                                             "algorithm (rsa-sha256, ed25519-sha256).",
                                             METRICS_COUNTER,
                                             "alg",
                                             metrics_hamr_dkim_algs),
    [METRICS_DKIM_FAILURES] = METRICS_LABELLED("hamr_dkim_failures_total",
                                               "Messages whose DKIM signing failed (answered "
                                               "451 4.3.0), by key algorithm.",
                                               METRICS_COUNTER,
                                               "alg",
                                               metrics_hamr_dkim_algs),
    [METRICS_CLOCK_SKEW] = METRICS_PLAIN("hamr_clock_skew_seconds",
                                         "This node's wall clock less the cluster time "
                                         "(the leader's), 0 while it is not known.",
                                         METRICS_GAUGE),
    [METRICS_CLOCK_SKEWED] = METRICS_PLAIN("hamr_clock_skewed",
                                           "1 when this node's wall clock is more than "
                                           "[node] max_clock_skew away from the cluster time.",
                                           METRICS_GAUGE),
    [METRICS_LEASE_LAPSES] = METRICS_PLAIN("hamr_lease_lapses_total",
                                           "Delivery leases that ran out without an outcome and "
                                           "were given to a node again: each a possible "
                                           "duplicate, logged with both lease ids.",
                                           METRICS_COUNTER),
    [METRICS_DELIVERIES_STOPPED] = METRICS_PLAIN("hamr_deliveries_stopped_total",
                                                 "Deliveries this node stopped before the final "
                                                 "dot because their lease ran out by its clock.",
                                                 METRICS_COUNTER),
    [METRICS_DELIVERIES_RUNNING] =
        METRICS_PLAIN("hamr_deliveries_running", "Deliveries this node runs now.", METRICS_GAUGE),
    [METRICS_BUILD_INFO] = METRICS_LABELLED("hamr_build_info",
                                            "Version of this hamr build.",
                                            METRICS_GAUGE,
                                            "version",
                                            NULL),
};

_Static_assert(HAMR_ARRAY_LEN(metrics_hamr_defs) == METRICS_HAMR_COUNT,
               "metrics_hamr_defs and enum metrics_hamr_id disagree");
_Static_assert(HAMR_ARRAY_LEN(metrics_hamr_reject_codes) + 2 ==
                   HAMR_ARRAY_LEN(metrics_hamr_reject_labels),
               "reject codes and labels disagree");

/* metrics_hamr_new - the hamr registry with its build info set. */
int metrics_hamr_new(const char *version, struct metrics **out)
{
    int rv = metrics_new(metrics_hamr_defs, METRICS_HAMR_COUNT, out);
    if (rv != 0)
        return rv;
    metrics_set_label(*out, METRICS_BUILD_INFO, version);
    metrics_gauge_set(*out, METRICS_BUILD_INFO, 0, 1);
    return 0;
}

/* metrics_hamr_reject - count a refusal under its reply code. */
void metrics_hamr_reject(struct metrics *m, int code)
{
    unsigned i = 0;
    while (i < HAMR_ARRAY_LEN(metrics_hamr_reject_codes) && metrics_hamr_reject_codes[i] != code)
        i++;
    /* Not found: i is the index of "other". */
    metrics_inc_label(m, METRICS_SMTP_REJECTS, i);
}
