// The OpenVINO implementation of zscir::Engine: reads a bundle's ONNX graph with OpenVINO's ONNX frontend
// and runs it on the CPU plugin in fp32 (inference_precision f32: no silent bf16 on CPUs that have it).
#include <openvino/openvino.hpp>

#include "engines.hpp"

namespace zscir {

namespace {
ov::element::Type element(const std::string& dtype) {
  if (dtype == "float32") return ov::element::f32;
  if (dtype == "float16") return ov::element::f16;
  if (dtype == "int32") return ov::element::i32;
  if (dtype == "int64") return ov::element::i64;
  throw Error("Unsupported tensor dtype '" + dtype + "' in the manifest.");
}

ov::Core& core() {
  static ov::Core instance;  // loads the plugins once per process
  return instance;
}

class OpenVinoEngine : public Engine {
 public:
  OpenVinoEngine(const std::string& path, const GraphSpec& spec, const EngineOptions& options) : path_(path) {
    try {
      std::shared_ptr<ov::Model> model = core().read_model(path);
      ov::AnyMap config{ov::hint::inference_precision(ov::element::f32),
                        ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
      if (options.threads > 0) config.emplace(ov::inference_num_threads(options.threads));
      compiled_ = core().compile_model(model, options.device, config);
      request_ = compiled_.create_infer_request();
    } catch (const ov::Exception& e) {
      throw Error("OpenVINO cannot load " + spec.name + " (" + path + "): " + e.what());
    }
    device_ = options.device;
  }

  std::vector<float> run(const std::vector<Feed>& feeds, const std::string& output) override {
    try {
      for (const Feed& feed : feeds) {
        ov::Shape shape(feed.shape.begin(), feed.shape.end());
        ov::Tensor tensor(element(feed.dtype), shape, const_cast<void*>(feed.data));
        request_.set_tensor(feed.name, tensor);
      }
      request_.infer();
      ov::Tensor out = request_.get_tensor(output);
      if (out.get_element_type() != ov::element::f32)
        throw Error("Graph " + path_ + " output " + output + " is not float32.");
      const float* data = out.data<const float>();
      return std::vector<float>(data, data + out.get_size());
    } catch (const ov::Exception& e) {
      throw Error("OpenVINO failed to run " + path_ + ": " + e.what());
    }
  }

  std::string describe() const override { return "openvino " + std::string(ov::get_openvino_version().buildNumber) + " " + device_; }

 private:
  std::string path_, device_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};
}  // namespace

std::unique_ptr<Engine> open_openvino(const std::string& path, const GraphSpec& spec, const EngineOptions& options) {
  return std::make_unique<OpenVinoEngine>(path, spec, options);
}

}  // namespace zscir
