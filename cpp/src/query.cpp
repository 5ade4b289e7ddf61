// Composed queries: the graphs driven as zscir_infer.runtime.Runtime drives them, the formulas in float32.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "engines.hpp"
#include "zscir/zscir.hpp"

namespace zscir {

const char* const kMethods[6] = {"phi", "slerp", "image", "text", "average", "sum"};

namespace {
constexpr int kSequenceMultiple = 8;  // zscir_infer.contract.SEQUENCE_MULTIPLE

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

float dot(const std::vector<float>& a, const std::vector<float>& b) {
  float s = 0.0f;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}
}  // namespace

std::vector<std::string> available_engines() {
  std::vector<std::string> out{"openvino"};
#ifdef ZSCIR_WITH_ONNXRUNTIME
  out.push_back("onnxruntime");
#endif
  return out;
}

std::unique_ptr<Engine> open_engine(const std::string& onnx_path, const GraphSpec& spec, const EngineOptions& options) {
  if (options.kind == "openvino") return open_openvino(onnx_path, spec, options);
#ifdef ZSCIR_WITH_ONNXRUNTIME
  if (options.kind == "onnxruntime") return open_onnxruntime(onnx_path, spec, options);
#endif
  std::string have;
  for (const auto& k : available_engines()) have += (have.empty() ? "" : ", ") + k;
  throw Error("Engine '" + options.kind + "' is not built into this zscir_query (it has " + have +
              "); rebuild with its SDK (docs/cpp.md).");
}

// --- formulas (zscir_infer.runtime) ------------------------------------------------------------------------
std::vector<float> normalize(const std::vector<float>& v, double eps) {
  float norm = std::sqrt(dot(v, v));
  float d = std::max(norm, static_cast<float>(eps));
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = v[i] / d;
  return out;
}

std::vector<float> slerp(const std::vector<float>& img, const std::vector<float>& txt, double alpha,
                         double parallel_cos, double eps) {
  const std::vector<float> a = normalize(img, eps), b = normalize(txt, eps);
  const float cos = std::min(1.0f, std::max(-1.0f, dot(a, b)));
  const float theta = std::acos(cos), sin = std::sin(theta), alpha32 = static_cast<float>(alpha);
  const bool parallel = std::fabs(cos) > parallel_cos;
  const float w_img = parallel ? 1.0f - alpha32 : std::sin((1.0f - alpha32) * theta) / sin;
  const float w_txt = parallel ? alpha32 : std::sin(alpha32 * theta) / sin;
  std::vector<float> mix(a.size());
  for (size_t i = 0; i < a.size(); i++) mix[i] = w_img * a[i] + w_txt * b[i];
  return normalize(mix, eps);
}

std::vector<float> average(const std::vector<float>& img, const std::vector<float>& txt, double eps) {
  const std::vector<float> a = normalize(img, eps), b = normalize(txt, eps);
  std::vector<float> mix(a.size());
  for (size_t i = 0; i < a.size(); i++) mix[i] = a[i] + b[i];
  return normalize(mix, eps);
}

std::vector<float> sum_query(const std::vector<float>& img, const std::vector<float>& txt, double eps) {
  std::vector<float> mix(img.size());
  for (size_t i = 0; i < img.size(); i++) mix[i] = img[i] + txt[i];
  return normalize(mix, eps);
}

// --- QueryEncoder --------------------------------------------------------------------------------------------
QueryEncoder::QueryEncoder(const Bundle& bundle, const EngineOptions& options, const std::string& precision)
    : bundle_(bundle), options_(options), precision_(precision) {
  bundle_.graph("image_encoder", precision_);  // an unknown precision fails now
  tokenizer_ = Tokenizer::from_file(bundle_.verified(bundle_.tokenizer.file, bundle_.tokenizer.sha256), bundle_.tokenizer);
  if (bundle_.placeholder) {
    auto ids = tokenizer_.content_ids(Tokenizer::clean(*bundle_.placeholder));
    if (ids.size() != 1 || ids[0] != bundle_.placeholder_id)
      throw Error("Bundle " + bundle_.dir + ": the tokenizer does not give the placeholder '" + *bundle_.placeholder +
                  "' the manifest's id " + std::to_string(bundle_.placeholder_id) + "; re-export the bundle.");
  }
}

Engine& QueryEncoder::engine(const std::string& graph) {
  auto it = engines_.find(graph);
  if (it != engines_.end()) return *it->second;
  const GraphSpec& spec = bundle_.graph(graph, precision_);
  std::string path = bundle_.verified(spec.file, spec.sha256);
  return *(engines_[graph] = open_engine(path, spec, options_));
}

std::string QueryEncoder::engine_description() { return engine("image_encoder").describe(); }

// The ids a text graph is fed: cut after the EOT (rounded up to 8) when the tower is causal and the graph's
// token_ids have the dynamic sequence axis (zscir_infer.contract.trimmed_sequence_length).
std::vector<int64_t> QueryEncoder::ids_for(const std::string& graph, const std::vector<int64_t>& ids) const {
  const GraphSpec& spec = bundle_.graph(graph, precision_);
  const TensorSpec& tokens = spec.inputs.back();
  bool adaptive = bundle_.text_causal && tokens.shape.size() == 2 && tokens.shape[1] == "sequence";
  if (!adaptive) return ids;
  size_t eot = 0;
  for (size_t i = 0; i < ids.size(); i++)
    if (ids[i] > ids[eot]) eot = i;
  size_t needed = std::max<size_t>(eot + 1, 1);
  size_t length = std::min(((needed + kSequenceMultiple - 1) / kSequenceMultiple) * kSequenceMultiple, ids.size());
  return std::vector<int64_t>(ids.begin(), ids.begin() + length);
}

namespace {
struct IdBuffer {
  std::vector<int64_t> i64;
  std::vector<int32_t> i32;
  Feed feed(const TensorSpec& spec, const std::vector<int64_t>& ids) {
    if (spec.dtype == "int32") {
      i32.assign(ids.begin(), ids.end());
      return Feed{spec.name, "int32", {1, static_cast<int64_t>(ids.size())}, i32.data()};
    }
    i64 = ids;
    return Feed{spec.name, "int64", {1, static_cast<int64_t>(ids.size())}, i64.data()};
  }
};
}  // namespace

std::vector<float> QueryEncoder::image_features(const Image& decoded, QueryTiming* timing) {
  auto t0 = std::chrono::steady_clock::now();
  const PreprocessSpec& pre = bundle_.preprocess;
  std::vector<float> pixels = to_pixels(resize_and_crop(decoded, pre), pre);
  if (timing) timing->preprocess_ms += ms_since(t0);
  const GraphSpec& spec = bundle_.graph("image_encoder", precision_);
  Engine& e = engine("image_encoder");
  t0 = std::chrono::steady_clock::now();
  std::vector<float> out =
      e.run({Feed{spec.inputs.at(0).name, "float32", {1, 3, pre.image_size, pre.image_size}, pixels.data()}},
            spec.outputs.at(0).name);
  if (timing) timing->image_graph_ms += ms_since(t0);
  return out;
}

std::vector<float> QueryEncoder::text_features(const std::string& text, QueryTiming* timing) {
  auto t0 = std::chrono::steady_clock::now();
  bool truncated = false;
  std::vector<int64_t> ids = ids_for("text_encoder", tokenizer_.encode(text, &truncated));
  if (truncated)
    warnings.push_back("The text is longer than " + std::to_string(bundle_.context_length) +
                       " CLIP tokens: the rest was dropped (the end-of-text token is kept).");
  if (timing) timing->tokenize_ms += ms_since(t0);
  const GraphSpec& spec = bundle_.graph("text_encoder", precision_);
  Engine& e = engine("text_encoder");
  IdBuffer buffer;
  t0 = std::chrono::steady_clock::now();
  std::vector<float> out = e.run({buffer.feed(spec.inputs.at(0), ids)}, spec.outputs.at(0).name);
  if (timing) timing->text_graph_ms += ms_since(t0);
  return out;
}

std::vector<float> QueryEncoder::phi_query(const std::vector<float>& image_features, const std::string& prompt,
                                           QueryTiming* timing) {
  auto t0 = std::chrono::steady_clock::now();
  bool truncated = false;
  std::vector<int64_t> full = tokenizer_.encode(prompt, &truncated);
  if (std::find(full.begin(), full.end(), bundle_.placeholder_id) == full.end())
    warnings.push_back("Prompt '" + prompt + "' lost its placeholder '" + bundle_.placeholder.value_or("") +
                       "' to truncation: the reference image does not reach this query.");
  else if (truncated)
    warnings.push_back("The prompt is longer than the context: its tail was dropped.");
  std::vector<int64_t> ids = ids_for("query_encoder", full);
  if (timing) timing->tokenize_ms += ms_since(t0);
  const GraphSpec& spec = bundle_.graph("query_encoder", precision_);
  Engine& e = engine("query_encoder");
  IdBuffer buffer;
  t0 = std::chrono::steady_clock::now();
  std::vector<float> out =
      e.run({Feed{spec.inputs.at(0).name, "float32", {1, static_cast<int64_t>(image_features.size())},
                  image_features.data()},
             buffer.feed(spec.inputs.at(1), ids)},
            spec.outputs.at(0).name);
  if (timing) timing->query_graph_ms += ms_since(t0);
  return out;
}

std::string QueryEncoder::resolve_template(const std::string& templ) const {
  if (templ.empty()) {
    auto it = bundle_.templates.find("default");
    if (it == bundle_.templates.end())
      throw Error("Bundle " + bundle_.dir + " has no default template: pass --template 'a photo of $ that {caption}'.");
    return it->second;
  }
  auto it = bundle_.templates.find(templ);
  return it == bundle_.templates.end() ? templ : it->second;
}

std::vector<float> QueryEncoder::encode(const std::string& image_path, const std::string& text, std::string method,
                                        const std::string& templ, double alpha, QueryTiming* timing) {
  auto start = std::chrono::steady_clock::now();
  if (method.empty()) method = bundle_.default_method();
  if (std::find(std::begin(kMethods), std::end(kMethods), method) == std::end(kMethods))
    throw Error("Unknown method '" + method + "': use one of phi, slerp, image, text, average, sum.");
  if (alpha > 1.0) throw Error("alpha is the text weight of slerp and must be in [0, 1], got " + std::to_string(alpha) + ".");
  if (alpha < 0.0) alpha = bundle_.slerp_alpha;
  if (method == "phi" && !bundle_.has_graph("query_encoder"))
    throw Error("Method 'phi' needs a query encoder; bundle " + bundle_.dir + " (method " + bundle_.method +
                ") has none: use method sum, slerp, image, text or average.");
  if (method == "sum") {
    for (const char* g : {"image_encoder", "text_encoder"})
      if (bundle_.graph(g, precision_).normalized_output)
        throw Error(std::string("Bundle ") + bundle_.dir + ": its " + g + " outputs normalized features, but method "
                    "'sum' adds the raw image and text features; re-export the bundle, or use method 'average'.");
  }
  const double eps = bundle_.norm_eps;
  std::vector<float> q;
  if (method == "text") {
    q = normalize(text_features(text, timing), eps);
  } else {
    std::string prompt;
    if (method == "phi") prompt = fill_template(resolve_template(templ), text, bundle_.placeholder);  // before decoding
    auto t0 = std::chrono::steady_clock::now();
    Image decoded = decode_image(image_path);
    if (timing) timing->decode_ms += ms_since(t0);
    std::vector<float> v_img = image_features(decoded, timing);
    if (method == "phi") {
      q = phi_query(v_img, prompt, timing);
    } else if (method == "image") {
      q = normalize(v_img, eps);
    } else {
      std::vector<float> v_txt = text_features(text, timing);
      if (method == "average")
        q = average(v_img, v_txt, eps);
      else if (method == "sum")
        q = sum_query(v_img, v_txt, eps);
      else
        q = slerp(v_img, v_txt, alpha, bundle_.slerp_parallel_cos, eps);
    }
  }
  if (timing) timing->total_ms += ms_since(start);
  return q;
}

}  // namespace zscir
