from tests.ops.helpers import kernel_device  # noqa: F401  (fixture)
