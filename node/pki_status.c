/*
 * pki_status.c - the cluster PKI's expiry for hamrctl status, /metrics and
 * the log. See pki_status.h.
 *
 * Every figure is read from net/cluster_tls at the moment it is asked for:
 * the days count down with the clock and jump at a reload, and nothing here
 * keeps a copy that could go stale.
 *
 * Security: pki_status_describe may be given another node's answer
 * (hamrctl): the identity is the only text in it, and is made printable.
 */
#include "node/pki_status.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"

/* pki_status_renew_soon - under the renewal threshold (expired included). */
bool pki_status_renew_soon(int64_t days_left)
{
    return days_left < PKI_STATUS_RENEW_DAYS;
}

/* pki_status_fill - the ClusterTlsStatus of c at now. */
void pki_status_fill(const struct cluster_tls *c,
                     time_t now,
                     Hamr__ClusterTlsStatus *out,
                     char *ident,
                     size_t identlen)
{
    hamr__cluster_tls_status__init(out);
    if (c == NULL) {
        out->plaintext = 1;
        return;
    }
    out->identity = (char *)cluster_tls_identity_name(cluster_tls_self(c), ident, identlen);
    out->cert_days_left = cluster_tls_days_left(c, false, now);
    out->ca_days_left = cluster_tls_days_left(c, true, now);
    out->cert_not_after = (int64_t)cluster_tls_not_after(c, false);
    out->ca_not_after = (int64_t)cluster_tls_not_after(c, true);
    out->reloads = cluster_tls_reloads(c);
}

/*
 * pki_status_when - "in 364 days", "in 1 day", "within a day" or "expired",
 * then with note " (renew soon)" or " (renew now)" when it is due.
 */
static void pki_status_when(int64_t days, bool note_due, char *out, size_t outlen)
{
    const char *note = "";
    if (note_due && pki_status_renew_soon(days))
        note = days < 0 ? " (renew now)" : " (renew soon)";
    if (days < 0)
        snprintf(out, outlen, "expired%s", note);
    else if (days == 0)
        snprintf(out, outlen, "within a day%s", note);
    else
        snprintf(out, outlen, "in %" PRId64 " day%s%s", days, days == 1 ? "" : "s", note);
}

/* pki_status_describe - one line for hamrctl status and the log. */
const char *pki_status_describe(const Hamr__ClusterTlsStatus *s, char *out, size_t outlen)
{
    if (s->plaintext) {
        snprintf(out, outlen, "off (plaintext)");
        return out;
    }
    char ident[PKI_STATUS_IDENT_MAX];
    char cert[64], ca[64];
    const char *id = s->identity != NULL && s->identity[0] != '\0' ? s->identity : "no identity";
    log_printable(ident, sizeof(ident), id, strlen(id));
    pki_status_when(s->cert_days_left, true, cert, sizeof(cert));
    pki_status_when(s->ca_days_left, true, ca, sizeof(ca));
    snprintf(out, outlen, "%s, certificate %s%s, CA %s", ident,
             s->cert_days_left < 0 ? "" : "expires ", cert, ca);
    return out;
}

/* pki_status_metrics - the METRICS_PKI_* families from c, or hidden. */
void pki_status_metrics(const struct cluster_tls *c, time_t now, struct metrics *m)
{
    static const unsigned families[] = {METRICS_PKI_DAYS_LEFT, METRICS_PKI_NOT_AFTER,
                                        METRICS_PKI_RELOADS};
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        metrics_hide(m, families[i], c == NULL);
    if (c == NULL)
        return;
    static const struct {
        unsigned label;
        bool ca;
    } certs[] = {{METRICS_CERT_NODE, false}, {METRICS_CERT_CA, true}};
    for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
        metrics_gauge_set(m, METRICS_PKI_DAYS_LEFT, certs[i].label,
                          (double)cluster_tls_days_left(c, certs[i].ca, now));
        metrics_gauge_set(m, METRICS_PKI_NOT_AFTER, certs[i].label,
                          (double)cluster_tls_not_after(c, certs[i].ca));
    }
    metrics_counter_set(m, METRICS_PKI_RELOADS, 0, cluster_tls_reloads(c));
}

/* pki_status_log - an info line, and a warning per certificate due for renewal. */
void pki_status_log(const struct cluster_tls *c,
                    time_t now,
                    const char *event,
                    const char *cert_file,
                    const char *ca_file)
{
    Hamr__ClusterTlsStatus s;
    char ident[PKI_STATUS_IDENT_MAX];
    char line[256];
    pki_status_fill(c, now, &s, ident, sizeof(ident));
    log_info("cluster TLS %s: %s (certificate %s, CA %s)", event,
             pki_status_describe(&s, line, sizeof(line)), cert_file, ca_file);
    char when[64];
    if (pki_status_renew_soon(s.cert_days_left)) {
        pki_status_when(s.cert_days_left, false, when, sizeof(when));
        log_warn(
            "cluster TLS: the certificate of %s (%s) %s%s: put a new one of the cluster CA "
            "in its place (deploy/make-pki.sh) and send hamrd SIGHUP",
            ident, cert_file, s.cert_days_left < 0 ? "" : "expires ", when);
    }
    if (pki_status_renew_soon(s.ca_days_left)) {
        pki_status_when(s.ca_days_left, false, when, sizeof(when));
        log_warn(
            "cluster TLS: the cluster CA (%s) %s%s: renew it (a new CA in every node's CA "
            "file, node and operator certificates of it) and send each hamrd SIGHUP",
            ca_file, s.ca_days_left < 0 ? "" : "expires ", when);
    }
}
