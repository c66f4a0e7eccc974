"""memslotd: a control plane for KVM guest memory."""

__version__ = "0.1.0"
