// The ONNX Runtime implementation of zscir::Engine, compiled only where ONNX Runtime's C++ SDK exists
// (cmake -DONNXRUNTIME_ROOT=<extracted onnxruntime-linux-x64-*.tgz>). It applies the manifest's
// `onnxruntime.disabled_optimizers` as the session config entry optimization.disable_specified_optimizers,
// which is what zscir_infer's OrtSession does.
#include <onnxruntime_cxx_api.h>

#include "engines.hpp"

namespace zscir {

namespace {
ONNXTensorElementDataType element(const std::string& dtype) {
  if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (dtype == "int32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (dtype == "int64") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  throw Error("Unsupported tensor dtype '" + dtype + "' in the manifest.");
}

size_t element_size(const std::string& dtype) { return dtype == "int64" ? 8 : 4; }

Ort::Env& env() {
  static Ort::Env instance(ORT_LOGGING_LEVEL_WARNING, "zscir");
  return instance;
}

class OnnxRuntimeEngine : public Engine {
 public:
  OnnxRuntimeEngine(const std::string& path, const GraphSpec& spec, const EngineOptions& options) : path_(path) {
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (options.threads > 0) so.SetIntraOpNumThreads(options.threads);
    if (!spec.disabled_optimizers.empty()) {
      std::string joined;
      for (const auto& name : spec.disabled_optimizers) joined += (joined.empty() ? "" : ",") + name;
      so.AddConfigEntry("optimization.disable_specified_optimizers", joined.c_str());
    }
    session_ = std::make_unique<Ort::Session>(env(), path.c_str(), so);
  }

  std::vector<float> run(const std::vector<Feed>& feeds, const std::string& output) override {
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    std::vector<const char*> names;
    for (const Feed& feed : feeds) {
      size_t count = 1;
      for (int64_t d : feed.shape) count *= static_cast<size_t>(d);
      values.push_back(Ort::Value::CreateTensor(memory, const_cast<void*>(feed.data), count * element_size(feed.dtype),
                                                feed.shape.data(), feed.shape.size(), element(feed.dtype)));
      names.push_back(feed.name.c_str());
    }
    const char* out_name = output.c_str();
    auto outs = session_->Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(), &out_name, 1);
    const float* data = outs[0].GetTensorData<float>();
    return std::vector<float>(data, data + outs[0].GetTensorTypeAndShapeInfo().GetElementCount());
  }

  std::string describe() const override { return "onnxruntime " + std::string(Ort::GetVersionString()) + " CPU"; }

 private:
  std::string path_;
  std::unique_ptr<Ort::Session> session_;
};
}  // namespace

std::unique_ptr<Engine> open_onnxruntime(const std::string& path, const GraphSpec& spec, const EngineOptions& options) {
  return std::make_unique<OnnxRuntimeEngine>(path, spec, options);
}

}  // namespace zscir
