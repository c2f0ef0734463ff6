"""Data stage: any layout -> Manifest -> validated, patient-level split, lazily decoded tensors.

Modules, in pipeline order: `readers` (one file -> gray array), `sources` (layout -> Manifest), `labels`
(task -> class order), `validate` (decode all, data report), `split` (patient-level splits.csv), `dataset`
(torch Dataset), `prepare` (all of the above for a job), `synth` (phantom generator).
"""
