"""A digest of each float kernel family's output, bit for bit: which kernels give another number on another CPU.

    python benchmarks/kernel_digests.py                                 # this CPU, native kernels
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 python benchmarks/kernel_digests.py
    qemu-x86_64 -cpu EPYC "$(which python)" benchmarks/kernel_digests.py    # an emulated CPU without AVX-512

A convolution and its gradient (oneDNN), a matrix product (MKL), softmax, layer norm and tanh (ATen) and exp
(MKL's vector maths through ATen), on fixed random inputs, with 2 threads.
"""

from __future__ import annotations

import hashlib

import torch


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().numpy().tobytes()).hexdigest()[:8]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    images, weights = torch.randn(64, 32, 28, 28), torch.randn(64, 32, 3, 3)
    a, b = torch.randn(256, 512), torch.randn(512, 300)
    inputs = images.clone().requires_grad_()
    torch.nn.functional.conv2d(inputs, weights, padding=1).square().sum().backward()
    outputs = {
        "conv": torch.nn.functional.conv2d(images, weights, padding=1),
        "conv_grad": inputs.grad,
        "matmul": a @ b,
        "softmax": torch.softmax(a, 1).sum(0),
        "layer_norm": torch.nn.functional.layer_norm(a, (512,)),
        "tanh": torch.tanh(a),
        "exp": torch.exp(a),
    }
    kernels = "  ".join(f"{name} {digest(tensor)}" for name, tensor in outputs.items())
    print(f"{torch.backends.cpu.get_cpu_capability():<7} {kernels}")


if __name__ == "__main__":
    main()
