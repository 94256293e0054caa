"""Model architectures: each turns a spec into a forward graph."""
