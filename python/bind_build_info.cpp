// rapidfire_core._C.build_info(): build facts plus a live CUDA probe as a dict.
#include <optional>

#include "bindings.h"
#include "rapidfire/build_info.h"

namespace py = pybind11;

namespace rapidfire::python {

namespace {

py::object optional_int(const std::optional<int>& v) {
  return v ? py::object(py::int_(*v)) : py::object(py::none());
}

py::dict build_info() {
  const BuildConfig& c = build_config();
  DeviceStatus s;
  {
    // The CUDA probe may take a while on first use (driver init); let other
    // Python threads run meanwhile.
    py::gil_scoped_release release;
    s = query_devices();
  }
  py::dict d;
  d["version"] = c.version;
  d["native_loaded"] = true;
  d["cuda_compiled"] = c.cuda_compiled;
  d["cuda_toolkit_version"] = c.cuda_compiled ? py::object(py::str(c.cuda_toolkit_version))
                                              : py::object(py::none());
  d["cuda_architectures"] = c.cuda_compiled ? py::object(py::str(c.cuda_architectures))
                                            : py::object(py::none());
  d["cuda_runtime_version"] = optional_int(s.runtime_version);
  d["cuda_driver_version"] = optional_int(s.driver_version);
  d["gpu_usable"] = s.usable;
  d["gpu_count"] = s.count;
  d["gpu_error"] = s.usable ? py::object(py::none()) : py::object(py::str(s.error));
  d["compiler"] = c.compiler;
  d["build_type"] = c.build_type;
  return d;
}

}  // namespace

void bind_build_info(py::module_& m) {
  m.def("build_info", &build_info,
        "Build facts and a live GPU probe.\n\n"
        "Keys: version, native_loaded, cuda_compiled, cuda_toolkit_version, cuda_architectures,\n"
        "cuda_runtime_version, cuda_driver_version, gpu_usable, gpu_count, gpu_error, compiler,\n"
        "build_type. gpu_* are re-queried on every call; gpu_error is None when gpu_usable.");
  m.attr("__version__") = build_config().version;
  m.attr("CUDA_COMPILED") = build_config().cuda_compiled;
}

}  // namespace rapidfire::python
