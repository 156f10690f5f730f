"""One way to talk to Triton (KServe v2 over HTTP/1.1 with binary tensors): codec, framing, clients."""
