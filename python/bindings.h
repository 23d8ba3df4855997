// Registration hooks for the pybind11 module rapidfire_core._C.
//
// Each binding unit (bind_*.cpp) exposes one function that adds its names to
// the module; module.cpp calls them all. New native features add a unit here.
#pragma once

#include <pybind11/pybind11.h>

namespace rapidfire::python {

void bind_build_info(pybind11::module_& m);
void bind_memory(pybind11::module_& m);  // HostArena, CopyEngine, CopyEvent

}  // namespace rapidfire::python
