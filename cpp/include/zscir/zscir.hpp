// zscir C++ consumer: runs a composed image retrieval query from a zscir bundle without Python.
//
// The bundle (manifest.json + ONNX graphs + tokenizer.json) is the whole contract; this library reads it,
// verifies every file's sha256, tokenizes like zscir_infer.tokenizer (minus ftfy, see docs/cpp.md),
// decodes and preprocesses images exactly as zscir_infer.preprocess (Pillow's antialiased resize), runs the
// graphs through an Engine (OpenVINO here; ONNX Runtime where its SDK exists) and composes the query with
// the formulas of zscir_infer.runtime. A Gallery searches a zscir-infer gallery folder (FAISS + SQLite).
//
//   zscir::Bundle bundle = zscir::Bundle::load("bundle/");
//   zscir::QueryEncoder encoder(bundle, {});                     // OpenVINO on CPU, fp32
//   std::vector<float> q = encoder.encode("ref.jpg", "as a sketch", "phi");
//   zscir::Gallery gallery = zscir::Gallery::open("gallery/");
//   for (const zscir::Hit& hit : gallery.search(q, 10)) ...
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace zscir {

// Every failure: the message names the file or value and what to do.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- bundle --------------------------------------------------------------------------------------------
struct TensorSpec {
  std::string name;
  std::string dtype;               // float32, float16, int32, int64
  std::vector<std::string> shape;  // "batch", "sequence" or a number
};

struct GraphSpec {
  std::string name, precision, file, sha256;
  std::vector<TensorSpec> inputs, outputs;
  bool normalized_output = false;
  std::vector<std::string> disabled_optimizers;  // ONNX Runtime: optimization.disable_specified_optimizers
};

struct PreprocessSpec {
  int image_size = 0;
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  std::string interpolation = "bicubic";  // bicubic | bilinear
  std::string resize_mode = "shortest";   // shortest | squash | longest | targetpad
  int fill_color = 0;
  double target_ratio = 0.0;  // targetpad only
};

// A manifest's "preprocess" object (JSON text), validated.
PreprocessSpec parse_preprocess(const std::string& json_text);

struct TokenizerSpec {
  std::string file, sha256;
  int context_length = 77;
  int64_t sot_id = 49406, eot_id = 49407, pad_id = 0;
};

std::string sha256_file(const std::string& path);

class Bundle {
 public:
  static Bundle load(const std::string& dir, bool verify = true);

  std::string dir, method;
  int format_version = 0;
  int embed_dim = 0;
  int context_length = 77;
  std::optional<std::string> placeholder;  // "$" / "*"; none for encoder-only bundles
  int64_t placeholder_id = -1;
  std::string placeholder_policy = "all";
  std::map<std::string, std::string> templates;
  double slerp_alpha = 0.8;
  double slerp_parallel_cos = 0.9995;  // manifest composition.slerp.parallel_cos (absent: zscir's constant)
  double norm_eps = 1e-12;             // manifest composition.norm_eps
  bool text_causal = false;
  PreprocessSpec preprocess;
  TokenizerSpec tokenizer;
  std::map<std::string, std::map<std::string, GraphSpec>> graphs;  // name -> precision -> spec

  bool has_graph(const std::string& name) const { return graphs.count(name) > 0; }
  const GraphSpec& graph(const std::string& name, const std::string& precision = "fp32") const;
  std::string default_method() const;
  // zscir_infer.bundle.Bundle.bundle_id: sha256 of json.dumps({"graphs": {name.precision: sha256}, "tokenizer":
  // sha256}, sort_keys=True); a gallery records the bundle_id that encoded it.
  std::string bundle_id() const;
  // The absolute path of a bundle file, once its sha256 equals the manifest's (hashed once per process).
  std::string verified(const std::string& relative, const std::string& sha256) const;

 private:
  bool verify_ = true;
  mutable std::map<std::string, bool> verified_;
};

// --- text ----------------------------------------------------------------------------------------------
class Tokenizer {
 public:
  // tokenizer.json (the bundle's Hugging Face tokenizers file): CLIP's regex (explicit code point ranges),
  // byte-level map, BPE merges with the "</w>" suffix.
  static Tokenizer from_file(const std::string& path, const TokenizerSpec& spec);
  // zscir_infer.tokenizer.clean without ftfy: html.unescape twice, whitespace collapsed, lowercase.
  static std::string clean(const std::string& utf8);
  // Token ids [context_length]: SOT ids EOT, zero padded; cut keeping EOT last (truncated set).
  std::vector<int64_t> encode(const std::string& utf8, bool* truncated = nullptr) const;
  // The BPE ids of an already cleaned text, no framing.
  std::vector<int64_t> content_ids(const std::string& cleaned_utf8) const;

  struct Impl;
  std::shared_ptr<const Impl> impl;
  TokenizerSpec spec;
};

// Python's str.format for a prompt template, with zscir's rules (zscir_infer.contract.fill_template).
std::string fill_template(const std::string& templ, const std::string& caption,
                          const std::optional<std::string>& placeholder);

// --- images --------------------------------------------------------------------------------------------
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height][width][3]
};

// JPEG (libjpeg, Pillow's default decoder settings) or PNG (libpng), EXIF orientation applied, as RGB.
Image decode_image(const std::string& path);
// Pillow's Image.resize (reducing_gap None) for 8-bit RGB: separable, antialiased, fixed point.
Image resize(const Image& in, int width, int height, const std::string& interpolation);
// zscir_infer.preprocess.resize_and_crop: [target pad,] resize, crop or pad -> S x S.
Image resize_and_crop(const Image& in, const PreprocessSpec& spec);
// The image encoder's input [3, S, S]: (v / 255 - mean) / std in float32.
std::vector<float> to_pixels(const Image& square, const PreprocessSpec& spec);

// --- engines -------------------------------------------------------------------------------------------
struct Feed {
  std::string name;
  std::string dtype;  // float32, int32, int64
  std::vector<int64_t> shape;
  const void* data;
};

struct EngineOptions {
  std::string kind = "openvino";  // openvino | onnxruntime (when built with it)
  std::string device = "CPU";
  int threads = 0;  // 0: the engine's default
};

// One ONNX graph, one output [B, D] float32.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::vector<float> run(const std::vector<Feed>& feeds, const std::string& output) = 0;
  virtual std::string describe() const = 0;
};

std::unique_ptr<Engine> open_engine(const std::string& onnx_path, const GraphSpec& spec, const EngineOptions& options);
std::vector<std::string> available_engines();

// --- composition (zscir_infer.runtime's formulas, float32) ----------------------------------------------
std::vector<float> normalize(const std::vector<float>& v, double eps = 1e-12);
std::vector<float> slerp(const std::vector<float>& img, const std::vector<float>& txt, double alpha,
                         double parallel_cos = 0.9995, double eps = 1e-12);
std::vector<float> average(const std::vector<float>& img, const std::vector<float>& txt, double eps = 1e-12);
std::vector<float> sum_query(const std::vector<float>& img, const std::vector<float>& txt, double eps = 1e-12);

extern const char* const kMethods[6];  // phi slerp image text average sum

struct QueryTiming {
  double decode_ms = 0, preprocess_ms = 0, tokenize_ms = 0, image_graph_ms = 0, text_graph_ms = 0,
         query_graph_ms = 0, total_ms = 0;
};

class QueryEncoder {
 public:
  QueryEncoder(const Bundle& bundle, const EngineOptions& options, const std::string& precision = "fp32");
  // The unit query vector [D]. method: phi slerp image text average sum ("" = the bundle's default);
  // templ: for phi, a template or the name of one of the bundle's (default: "default"); alpha < 0: bundle's.
  std::vector<float> encode(const std::string& image_path, const std::string& text, std::string method = "",
                            const std::string& templ = "", double alpha = -1.0, QueryTiming* timing = nullptr);
  std::vector<float> image_features(const Image& decoded, QueryTiming* timing = nullptr);  // unnormalized [D]
  std::vector<float> text_features(const std::string& text, QueryTiming* timing = nullptr);  // unnormalized [D]
  std::vector<float> phi_query(const std::vector<float>& image_features, const std::string& prompt,
                               QueryTiming* timing = nullptr);
  std::string resolve_template(const std::string& templ) const;
  const Tokenizer& tokenizer() const { return tokenizer_; }
  std::string engine_description();
  std::vector<std::string> warnings;  // placeholder lost, text truncated

 private:
  Engine& engine(const std::string& graph);
  std::vector<int64_t> ids_for(const std::string& graph, const std::vector<int64_t>& ids) const;
  const Bundle& bundle_;
  EngineOptions options_;
  std::string precision_;
  Tokenizer tokenizer_;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
};

// --- gallery -------------------------------------------------------------------------------------------
struct Hit {
  int64_t id;
  std::string name, path;
  float score;
};

class Gallery {
 public:
  // A zscir-infer gallery folder of the faiss store: gallery.json, items.sqlite, features.f32, index file.
  static Gallery open(const std::string& dir);
  std::vector<Hit> search(const std::vector<float>& query, int k) const;
  int64_t count() const { return count_; }
  int dim() const { return dim_; }
  std::string bundle_id, how;  // how: "faiss index <file> (<factory>)" or "exact scan of features.f32"

  struct Impl;
  std::shared_ptr<Impl> impl;

 private:
  int64_t count_ = 0;
  int dim_ = 0;
};

}  // namespace zscir
