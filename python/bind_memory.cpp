// rapidfire_core._C.HostArena / CopyEngine / CopyEvent / ArenaExhaustedError.
//
// The arena exports the buffer protocol (one writable uint8 vector over the whole
// arena), so `torch.frombuffer(arena, dtype=torch.uint8)` and `memoryview(arena)`
// view it without copying and keep it alive. Copies release the GIL; CUDA
// streams and events travel as integers (torch's `stream.cuda_stream`).
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "rapidfire/copy_engine.h"
#include "rapidfire/host_arena.h"
#include "rapidfire/host_pages.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace rapidfire::python {

namespace {

using RangeTuple = std::tuple<std::size_t, std::uintptr_t, std::size_t>;

std::vector<CopyRange> to_ranges(const std::vector<RangeTuple>& ranges) {
  std::vector<CopyRange> out;
  out.reserve(ranges.size());
  for (const auto& [offset, ptr, nbytes] : ranges) out.push_back({offset, ptr, nbytes});
  return out;
}

CopyTarget to_target(std::optional<int> device, std::uintptr_t stream) {
  CopyTarget t;
  if (device.has_value()) {
    if (*device < 0) throw std::invalid_argument("device must be a CUDA device index >= 0 or None");
    t.cuda = true;
    t.device = *device;
    t.stream = stream;
  }
  return t;
}

py::dict stats_dict(const ArenaStats& s) {
  py::dict d;
  d["capacity"] = s.capacity;
  d["used"] = s.used;
  d["peak_used"] = s.peak_used;
  d["free"] = s.capacity - s.used;
  d["largest_free_block"] = s.largest_free;
  d["num_slots"] = s.num_slots;
  d["num_free_blocks"] = s.num_free_blocks;
  return d;
}

constexpr const char* kRangesDoc =
    "ranges: sequence of (arena_offset, pointer, nbytes) int tuples; every arena range must lie\n"
    "inside one live slot (checked before anything is enqueued).\n"
    "device: None -> `pointer`s are host memory and the copy runs on the engine's threads;\n"
    "an int -> they are memory of that CUDA device and the copies are enqueued on `stream`\n"
    "(a cudaStream_t as int, e.g. torch.cuda.Stream.cuda_stream; 0 = legacy default stream).\n"
    "Returns a CopyEvent at once; the GIL is released while enqueueing.";

}  // namespace

void bind_memory(py::module_& m) {
  // A MemoryError subclass; pybind11 keeps the type in interpreter-safe storage.
  py::register_exception<ArenaExhausted>(m, "ArenaExhaustedError", PyExc_MemoryError);

  py::class_<HostArena, std::shared_ptr<HostArena>>(m, "HostArena", py::buffer_protocol(), R"doc(
One host allocation carved into slots (pinned when a GPU is usable).

    arena = HostArena(1 << 30, pin="auto")     # "auto" | "pinned" | "pageable"
    off = arena.allocate(n)                    # offset of >= n bytes, multiple of `alignment`
    t = torch.frombuffer(arena, dtype=torch.uint8)[off:off + n]   # zero-copy view
    arena.free(off)

Free blocks are merged with their neighbours; allocation is best fit. Thread-safe.
Exhaustion raises ArenaExhaustedError (a MemoryError) naming the sizes; a double
free raises ValueError. The buffer protocol exports the whole arena as writable
uint8 and keeps the arena alive while a view exists.)doc")
      .def(py::init([](std::size_t capacity, std::size_t alignment, const std::string& pin, int device) {
             PinMode mode = parse_pin_mode(pin);
             py::gil_scoped_release release;  // cudaHostAlloc of GBs takes ~0.3 s per GB
             return std::make_shared<HostArena>(capacity, alignment, mode, device);
           }),
           "capacity"_a, py::kw_only(), "alignment"_a = 512, "pin"_a = "auto", "device"_a = 0)
      .def_buffer([](HostArena& a) {
        return py::buffer_info(a.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(a.capacity())}, {1}, /*readonly=*/false);
      })
      .def(
          "allocate",
          [](HostArena& a, std::size_t nbytes) {
            py::gil_scoped_release release;
            return a.allocate(nbytes);
          },
          "nbytes"_a, "Offset of a new slot of round_up(max(nbytes, 1), alignment) bytes.")
      .def(
          "free",
          [](HostArena& a, std::size_t offset) {
            py::gil_scoped_release release;
            a.free(offset);
          },
          "offset"_a, "Return the slot at `offset`; ValueError if it is not a live slot.")
      .def("slot_size", &HostArena::slot_size, "offset"_a, "Rounded size of the live slot at `offset`.")
      .def("check_range", &HostArena::check_range, "offset"_a, "nbytes"_a,
           "IndexError unless [offset, offset+nbytes) lies inside one live slot.")
      .def(
          "view",
          [](py::object self, std::size_t offset, std::size_t nbytes) {
            self.cast<HostArena&>().check_range(offset, nbytes);
            py::object whole = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(self.ptr()));
            if (!whole) throw py::error_already_set();
            py::object part =
                whole[py::slice(static_cast<py::ssize_t>(offset), static_cast<py::ssize_t>(offset + nbytes), 1)];
            return part;  // evaluated while `whole` is alive (an accessor would outlive it)
          },
          "offset"_a, "nbytes"_a,
          "A writable memoryview of bytes [offset, offset+nbytes) of one live slot (keeps the arena alive).")
      .def("stats", [](const HostArena& a) { return stats_dict(a.stats()); },
           "dict: capacity, used, peak_used, free, largest_free_block, num_slots, num_free_blocks (bytes).")
      .def("slots", &HostArena::slots, "Live slots as (offset, size) pairs, by offset.")
      .def("free_blocks", &HostArena::free_blocks, "Free blocks as (offset, size) pairs, by offset.")
      .def_property_readonly("capacity", &HostArena::capacity)
      .def_property_readonly("alignment", &HostArena::alignment)
      .def_property_readonly("used", [](const HostArena& a) { return a.stats().used; })
      .def_property_readonly("largest_free_block", [](const HostArena& a) { return a.stats().largest_free; })
      .def_property_readonly("pinned", &HostArena::pinned)
      .def_property_readonly("pin_error", [](const HostArena& a) -> py::object {
        return a.pin_error().empty() ? py::object(py::none()) : py::object(py::str(a.pin_error()));
      })
      .def_property_readonly("address", [](const HostArena& a) { return reinterpret_cast<std::uintptr_t>(a.data()); })
      .def("__len__", &HostArena::capacity)
      .def("__repr__", [](const HostArena& a) {
        ArenaStats s = a.stats();
        return "<HostArena capacity=" + std::to_string(s.capacity) + " used=" + std::to_string(s.used) +
               " slots=" + std::to_string(s.num_slots) + (a.pinned() ? " pinned>" : " pageable>");
      });

  py::class_<CopyEvent, std::shared_ptr<CopyEvent>>(m, "CopyEvent", R"doc(
Completion of one batched copy.

query() -> bool never blocks; synchronize() blocks the calling thread (GIL released);
stream_wait(stream) makes a CUDA stream (cudaStream_t as int) wait for the copy without
blocking the host (cudaStreamWaitEvent); for a host batch it synchronizes instead.
`handle` is the cudaEvent_t as an int (0 for a host batch).)doc")
      .def("query", [](const CopyEvent& e) {
        py::gil_scoped_release release;
        return e.query();
      })
      .def("synchronize", [](const CopyEvent& e) {
        py::gil_scoped_release release;
        e.synchronize();
      })
      .def(
          "stream_wait",
          [](const CopyEvent& e, std::uintptr_t stream) {
            py::gil_scoped_release release;
            e.block_stream(stream);
          },
          "stream"_a)
      .def_property_readonly("is_cuda", &CopyEvent::is_cuda)
      .def_property_readonly("handle", &CopyEvent::cuda_event)
      .def_property_readonly("device", [](const CopyEvent& e) -> py::object {
        return e.is_cuda() ? py::object(py::int_(e.device())) : py::object(py::none());
      })
      .def_property_readonly("nbytes", &CopyEvent::nbytes)
      .def("__repr__", [](const CopyEvent& e) {
        return std::string("<CopyEvent ") + (e.is_cuda() ? "cuda" : "host") + " nbytes=" +
               std::to_string(e.nbytes()) + ">";
      });

  py::class_<CopyEngine, std::shared_ptr<CopyEngine>>(m, "CopyEngine", R"doc(
Batched asynchronous copies between a HostArena and device (or host) memory.

    engine = CopyEngine(arena, threads=0)       # threads <= 0: min(4, CPU threads)
    ev = engine.d2h([(slot, t.data_ptr(), n)], device=0, stream=side.cuda_stream)
    ev = engine.h2d([(slot, t.data_ptr(), n)], device=0, stream=side.cuda_stream)
    ev.stream_wait(torch.cuda.current_stream().cuda_stream)   # no host sync
    engine.h2d([(slot, cpu_tensor.data_ptr(), n)])            # CPU path: device=None

The caller keeps the arena slots and the other side's memory alive until the event
completes.)doc")
      .def(py::init([](std::shared_ptr<HostArena> arena, int threads) {
             return std::make_shared<CopyEngine>(std::move(arena), threads);
           }),
           "arena"_a, py::kw_only(), "threads"_a = 0)
      .def(
          "h2d",
          [](CopyEngine& e, const std::vector<RangeTuple>& ranges, std::optional<int> device,
             std::uintptr_t stream) {
            std::vector<CopyRange> r = to_ranges(ranges);
            CopyTarget t = to_target(device, stream);
            py::gil_scoped_release release;
            return e.host_to_device(r, t);
          },
          "ranges"_a, py::kw_only(), "device"_a = py::none(), "stream"_a = 0,
          (std::string("Arena -> pointers.\n") + kRangesDoc).c_str())
      .def(
          "d2h",
          [](CopyEngine& e, const std::vector<RangeTuple>& ranges, std::optional<int> device,
             std::uintptr_t stream) {
            std::vector<CopyRange> r = to_ranges(ranges);
            CopyTarget t = to_target(device, stream);
            py::gil_scoped_release release;
            return e.device_to_host(r, t);
          },
          "ranges"_a, py::kw_only(), "device"_a = py::none(), "stream"_a = 0,
          (std::string("Pointers -> arena.\n") + kRangesDoc).c_str())
      .def(
          "copy_within",
          [](CopyEngine& e, std::size_t src, std::size_t dst, std::size_t nbytes) {
            py::gil_scoped_release release;
            return e.copy_within(src, dst, nbytes);
          },
          "src_offset"_a, "dst_offset"_a, "nbytes"_a,
          "Host-to-host copy inside the arena (snapshots); both ranges in live slots, not overlapping.")
      .def_property_readonly("arena", &CopyEngine::arena)
      .def_property_readonly("num_threads", &CopyEngine::num_threads);

  m.def(
      "advise_huge_pages",
      [](std::uintptr_t pointer, std::size_t nbytes) {
        return advise_huge_pages(reinterpret_cast<void*>(pointer), nbytes);
      },
      "pointer"_a, "nbytes"_a,
      "Ask the kernel for transparent huge pages on the whole 2 MiB pages inside host memory\n"
      "[pointer, pointer + nbytes) (madvise MADV_HUGEPAGE). Returns the bytes advised (0: none\n"
      "fit, not Linux, or refused). Only changes how fast untouched pages fault in.");
}

}  // namespace rapidfire::python
