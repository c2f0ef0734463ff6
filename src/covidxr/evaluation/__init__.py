"""Evaluation stage: metrics with patient-bootstrap CIs, threshold from val, calibration, shortcut audit,
external validation. Metric and audit functions are pure: arrays in, numbers out."""
