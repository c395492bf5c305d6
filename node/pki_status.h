/*
 * pki_status.h - how long the cluster PKI has left, told three ways: the
 * ClusterTlsStatus of hamrctl status, the hamr_cluster_tls_* series of
 * /metrics, and the log lines at start and after each SIGHUP reload.
 *
 * Days are whole days rounded down (cluster_tls_days_left): 0 is "less than
 * a day", negative is "expired". A certificate with fewer than
 * PKI_STATUS_RENEW_DAYS days left is due for renewal: the log warns, and
 * hamrctl status says "(renew soon)".
 *
 * Owns: nothing. May call: net/cluster_tls (reads), metrics, util/log.
 */
#ifndef HAMR_NODE_PKI_STATUS_H
#define HAMR_NODE_PKI_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "proto/hamr.pb-c.h"
#include "net/cluster_tls.h"
#include "node/metrics.h"

/* A certificate with fewer whole days left than this is due for renewal. */
#define PKI_STATUS_RENEW_DAYS 30

/* "node:" and a 20-digit id, or "operator:" and a name; for pki_status_fill's ident. */
#define PKI_STATUS_IDENT_MAX (CLUSTER_TLS_NAME_MAX + 16)

/* pki_status_renew_soon - days_left (whole days) is under PKI_STATUS_RENEW_DAYS, or expired. */
bool pki_status_renew_soon(int64_t days_left);

/*
 * pki_status_fill - out (initialised here) describes c at now; c NULL means
 * the cluster channels are in plaintext. out->identity points into ident
 * (identlen >= PKI_STATUS_IDENT_MAX), which must live as long as out.
 */
void pki_status_fill(const struct cluster_tls *c,
                     time_t now,
                     Hamr__ClusterTlsStatus *out,
                     char *ident,
                     size_t identlen);

/*
 * pki_status_describe - s as one line for people, into out (truncated):
 *   "node:2, certificate expires in 364 days, CA in 3649 days"
 *   "node:2, certificate expires in 9 days (renew soon), CA in 3649 days"
 *   "node:2, certificate expired (renew now), CA in 3649 days"
 *   "off (plaintext)"
 * s may come from another node: its identity is made printable. Returns out.
 */
const char *pki_status_describe(const Hamr__ClusterTlsStatus *s, char *out, size_t outlen);

/*
 * pki_status_metrics - hamr_cluster_tls_days_left, _not_after_seconds and
 * _reloads_total of m (a metrics_hamr_new registry) from c at now; with c
 * NULL (plaintext) the three families are hidden, so that an alert on
 * "days left < N" has nothing to fire on.
 */
void pki_status_metrics(const struct cluster_tls *c, time_t now, struct metrics *m);

/*
 * pki_status_log - after the cluster PKI was loaded or reloaded (event, e.g.
 * "loaded" or "reloaded"; borrowed for the call): one info line with
 * pki_status_describe and the files, then one warning for each of the
 * certificate and the CA that is due for renewal. c is not NULL.
 */
void pki_status_log(const struct cluster_tls *c,
                    time_t now,
                    const char *event,
                    const char *cert_file,
                    const char *ca_file);

#endif
