// The pybind11 module rapidfire_core._C: bindings only, logic lives in csrc/.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "rapidfire_core native library (C++/CUDA, no torch headers)";
  rapidfire::python::bind_build_info(m);
  rapidfire::python::bind_memory(m);
}
