"""Which library backs which technique. The only place that knows about library versions.

| technique                 | CPU                                   | CUDA                          |
|---------------------------|---------------------------------------|-------------------------------|
| dynamic int8              | torch.ao ``quantize_dynamic`` (x86)   | torchao Int8DynamicActInt8W   |
| dynamic fp16 weights      | torch.ao ``quantize_dynamic`` fp16    | (cast; use precision=fp16)    |
| static int8               | torch.ao FX PTQ (x86 engine)          | unsupported (no CUDA kernel)  |
| weight-only int8          | torchao Int8WeightOnlyConfig          | torchao Int8WeightOnlyConfig  |
| weight-only int4          | unsupported (no CPU kernel)           | torchao Int4WeightOnlyConfig  |

``torch.ao.quantization`` is deprecated upstream; every call to it goes through
:mod:`._torch_ao` so that replacing it is a one-file change.
"""
