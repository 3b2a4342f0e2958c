"""Failure diagnosis: the RecoveryDescriptor schema and the selectors that produce it.

Modules, one job each: `descriptor` (schema), `types` (FailureObservation, DiagnosisResult, Selector),
`prompt` (VLM question and answer parsing), `gemini`, `rules`, `oracle`, `cache` (backends),
`selectors` (make_selector / resolve_auto), `bank_diagnosis` (diagnose bank states; one descriptor per
failure mode by majority vote), `metrics` (accuracy with Wilson CIs, confusion matrices).
"""
