"""Triton kernels of spanbert-fast, installed as ``spanbert_fast.kernels``.

One file per op. Each file reads top-down: Triton kernel(s) -> launch function
(validates inputs) -> ``torch.library`` custom op with fake and autograd
registrations -> functional API. Pure-torch references live in
``spanbert_fast.ops``; the model reaches these kernels only through that module.

Importing this package does not import Triton; each op module does, so the
package works on machines without Triton as long as only the torch backend is used.
"""
