/* GSM8K answer extraction and exact-match scoring, as lm-eval's `gsm8k` task
 * (reference/formats-and-eval.md 1.6), without a regex library: each pattern
 * is matched by hand with Python `re` semantics (leftmost match, greedy
 * quantifiers, leftmost-first alternation, non-overlapping findall), checked
 * against python3 outputs in tests/test_gsm8k_extract.c.
 *
 * All strings are UTF-8. The patterns only involve ASCII characters, and a
 * UTF-8 continuation byte is never ASCII, so scanning bytes finds the same
 * matches Python finds scanning code points. */
#ifndef RQ_EVAL_GSM8K_EXTRACT_H
#define RQ_EVAL_GSM8K_EXTRACT_H

#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"

#define RQ_GSM8K_INVALID "[invalid]"

/* strict-match: the first match of "#### (\-?[0-9\.\,]+)", its group
 * stripped; "[invalid]" when there is none. *out is malloc'd. */
rq_status rq_gsm8k_strict_match(const char *text, char **out, rq_err *err);

/* flexible-extract: the last match of "(-?[$0-9.,]{2,})|(-?[0-9]+)", its first
 * non-empty group stripped; "[invalid]" when there is none. *out is malloc'd. */
rq_status rq_gsm8k_flexible_extract(const char *text, char **out, rq_err *err);

/* Length of text before the earliest occurrence of any stop string (empty
 * stop strings are ignored), i.e. lm-eval's `until` post-processing. */
size_t rq_gsm8k_stop_length(const char *text, const char *const *stops, size_t n_stops);

/* exact_match normalization, applied to prediction and reference alike:
 * re.sub each of ",", "\$", "(?s).*#### ", "\.$" with "" (in that order),
 * then lower-case. *out is malloc'd.
 * Lower-casing covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic
 * capitals (Python's str.lower maps a few rarer letters too; numbers, the
 * only thing that matters for GSM8K, are unaffected). */
rq_status rq_gsm8k_normalize(const char *text, char **out, rq_err *err);

/* exact_match of one filtered prediction against the reference answer (the
 * dataset's full `answer`): normalize both, compare. */
rq_status rq_gsm8k_exact_match(const char *prediction, const char *reference, bool *match, rq_err *err);

#endif /* RQ_EVAL_GSM8K_EXTRACT_H */
