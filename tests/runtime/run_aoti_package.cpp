// A process without Python runs an AOTInductor package that holds fusedrnn's
// ops (tests/test_graph_ops.py builds and runs it):
//
//   run_aoti_package <fusedrnn/_C library> <package.pt2> <input.pt> <output.pt>
//
// It loads the extension library (which registers fusedrnn::* with the
// dispatcher), then the package, runs it on the tensor saved in input.pt
// (torch.save) and saves the first output to output.pt for the test to
// compare.  Nothing here links or loads Python.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

namespace {

std::vector<char> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: run_aoti_package <fusedrnn _C library> <package.pt2> <input.pt> <output.pt>\n";
    return 2;
  }
  // RTLD_NOW: every symbol the library needs must resolve in a process without Python
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
    return 1;
  }
  const at::Tensor x = torch::jit::pickle_load(read_file(argv[3])).toTensor();
  torch::inductor::AOTIModelPackageLoader loader(argv[2]);
  const std::vector<at::Tensor> outputs = loader.run({x});
  const std::vector<char> saved = torch::jit::pickle_save(outputs.at(0));
  std::ofstream(argv[4], std::ios::binary).write(saved.data(), static_cast<std::streamsize>(saved.size()));
  std::cout << "ran " << argv[2] << ": " << outputs.size() << " outputs\n";
  return 0;
}
