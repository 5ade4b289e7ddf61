// Reading a bundle's manifest.json (zscir_infer/manifest.schema.json) and verifying its files' sha256.
#include <openssl/evp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "zscir/zscir.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace zscir {

namespace {
constexpr int kFormatVersion = 1;  // the newest bundle layout this program reads
constexpr const char* kRemedy = "re-export the bundle with `zscir-export`, or download it again";

std::string hex(const unsigned char* data, unsigned int n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; i++) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  return out;
}

const json& need(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key))
    throw Error(where + " lacks '" + key + "': the manifest is incomplete; " + kRemedy + ".");
  return obj.at(key);
}

std::string safe_relative(const std::string& file, const std::string& where) {
  fs::path p(file);
  if (file.empty() || p.is_absolute()) throw Error(where + ".file '" + file + "' is not a path inside the bundle.");
  for (const auto& part : p)
    if (part == "..") throw Error(where + ".file '" + file + "' points outside the bundle (..).");
  return file;
}

std::vector<TensorSpec> tensors(const json& list, const std::string& where) {
  std::vector<TensorSpec> out;
  for (const auto& t : list) {
    TensorSpec spec{need(t, "name", where).get<std::string>(), need(t, "dtype", where).get<std::string>(), {}};
    for (const auto& d : need(t, "shape", where))
      spec.shape.push_back(d.is_string() ? d.get<std::string>() : std::to_string(d.get<long long>()));
    out.push_back(std::move(spec));
  }
  return out;
}
}  // namespace

std::string sha256_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error("Cannot read " + path + " to check its sha256.");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<unsigned char> buf(1 << 22);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) EVP_DigestUpdate(ctx, buf.data(), n);
  bool failed = std::ferror(f);
  std::fclose(f);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  if (failed) throw Error("Reading " + path + " failed while checking its sha256.");
  return hex(digest, len);
}

PreprocessSpec parse_preprocess(const json& pre, const std::string& where) {
  PreprocessSpec p;
  p.image_size = need(pre, "image_size", where + " preprocess").get<int>();
  for (int c = 0; c < 3; c++) {
    p.mean[c] = need(pre, "mean", where).at(c).get<float>();
    p.std[c] = need(pre, "std", where).at(c).get<float>();
  }
  p.interpolation = pre.value("interpolation", "bicubic");
  p.resize_mode = pre.value("resize_mode", "shortest");
  p.fill_color = pre.value("fill_color", 0);
  p.target_ratio = pre.value("target_ratio", 0.0);
  if (p.image_size < 1) throw Error(where + ": preprocess.image_size must be positive.");
  if (p.interpolation != "bicubic" && p.interpolation != "bilinear")
    throw Error(where + ": preprocess.interpolation '" + p.interpolation + "' is not bicubic or bilinear.");
  const std::string& mode = p.resize_mode;
  if (mode != "shortest" && mode != "squash" && mode != "longest" && mode != "targetpad")
    throw Error(where + ": preprocess.resize_mode '" + mode + "' is not shortest, squash, longest or targetpad.");
  if (mode == "targetpad" && p.target_ratio < 1.0)
    throw Error(where + ": preprocess.target_ratio must be >= 1 for resize_mode targetpad.");
  return p;
}

PreprocessSpec parse_preprocess(const std::string& json_text) {
  try {
    return parse_preprocess(json::parse(json_text), "preprocess");
  } catch (const json::exception& e) {
    throw Error(std::string("The preprocess JSON is not valid (") + e.what() + ").");
  }
}

Bundle Bundle::load(const std::string& dir, bool verify) {
  fs::path root(dir);
  fs::path manifest_path = root / "manifest.json";
  if (!fs::is_directory(root)) throw Error("Bundle " + dir + " is not a directory: pass the folder that holds manifest.json.");
  if (!fs::is_regular_file(manifest_path))
    throw Error(dir + " has no manifest.json: it is not a zscir bundle (export one with `zscir-export`).");
  json m;
  try {
    std::ifstream in(manifest_path);
    m = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(manifest_path.string() + " is not valid JSON (" + e.what() + "); " + kRemedy + ".");
  }
  const std::string where = manifest_path.string();
  if (!m.is_object() || m.value("format", "") != "zscir-bundle")
    throw Error(where + " is not a zscir bundle manifest (format is not 'zscir-bundle').");
  Bundle b;
  b.verify_ = verify;
  b.dir = fs::absolute(root).lexically_normal().string();
  b.format_version = need(m, "format_version", where).get<int>();
  if (b.format_version > kFormatVersion)
    throw Error(where + " has format_version " + std::to_string(b.format_version) + ", newer than this program reads (" +
                std::to_string(kFormatVersion) + "): rebuild zscir_query from the zscir that exported it.");
  b.method = need(m, "method", where).get<std::string>();
  b.embed_dim = need(m, "embed_dim", where).get<int>();
  b.context_length = need(m, "context_length", where).get<int>();
  if (m.contains("placeholder") && !m["placeholder"].is_null()) {
    const json& p = m["placeholder"];
    b.placeholder = need(p, "text", where + " placeholder").get<std::string>();
    b.placeholder_id = need(p, "id", where + " placeholder").get<int64_t>();
    b.placeholder_policy = p.value("policy", "all");
  }
  const json templates = m.value("templates", json::object());
  for (auto& [name, text] : templates.items()) b.templates[name] = text.get<std::string>();
  b.slerp_alpha = need(m, "slerp_alpha", where).get<double>();
  if (m.contains("composition")) {  // the constants a consumer outside Python needs (issue 16)
    const json& c = m["composition"];
    if (c.contains("slerp")) b.slerp_parallel_cos = c["slerp"].value("parallel_cos", b.slerp_parallel_cos);
    b.norm_eps = c.value("norm_eps", b.norm_eps);
  }
  b.text_causal = m.contains("text") && m["text"].value("causal", false);

  b.preprocess = parse_preprocess(need(m, "preprocess", where), where);
  if (m.contains("resize")) {  // the exact algorithm, stated since issue 16: this program implements exactly it
    std::string algorithm = m["resize"].value("algorithm", "");
    if (algorithm != "pillow-resample")
      throw Error(where + ": resize.algorithm '" + algorithm + "' is not 'pillow-resample', the only one zscir_query "
                  "implements; rebuild zscir_query from the zscir that exported the bundle.");
  }

  const json& tok = need(m, "tokenizer", where);
  b.tokenizer.file = safe_relative(need(tok, "file", where + " tokenizer").get<std::string>(), "tokenizer");
  b.tokenizer.sha256 = need(tok, "sha256", where + " tokenizer").get<std::string>();
  b.tokenizer.context_length = tok.value("context_length", b.context_length);
  b.tokenizer.sot_id = need(tok, "sot_id", where).get<int64_t>();
  b.tokenizer.eot_id = need(tok, "eot_id", where).get<int64_t>();
  b.tokenizer.pad_id = need(tok, "pad_id", where).get<int64_t>();
  b.context_length = b.tokenizer.context_length;

  for (auto& [name, variants] : need(m, "graphs", where).items()) {
    for (auto& [precision, g] : variants.items()) {
      const std::string key = "graphs." + name + "." + precision;
      GraphSpec spec;
      spec.name = name;
      spec.precision = precision;
      spec.file = safe_relative(need(g, "file", key).get<std::string>(), key);
      spec.sha256 = need(g, "sha256", key).get<std::string>();
      spec.inputs = tensors(need(g, "inputs", key), key);
      spec.outputs = tensors(need(g, "outputs", key), key);
      spec.normalized_output = g.value("normalized_output", false);
      if (g.contains("onnxruntime")) {
        for (const auto& o : g["onnxruntime"].value("disabled_optimizers", json::array()))
          spec.disabled_optimizers.push_back(o.get<std::string>());
      }
      if (g.contains("external_data") && !g["external_data"].empty())
        throw Error(key + " keeps its weights in external data files; zscir_query reads single-file graphs only.");
      if (!fs::is_regular_file(root / spec.file))
        throw Error("Bundle file " + (root / spec.file).string() + " (manifest " + key + ") is missing: the bundle is "
                    "incomplete; " + kRemedy + ".");
      b.graphs[name][precision] = std::move(spec);
    }
  }
  if (!b.has_graph("image_encoder") || !b.has_graph("text_encoder"))
    throw Error(where + ": graphs must hold image_encoder and text_encoder; " + kRemedy + ".");
  return b;
}

const GraphSpec& Bundle::graph(const std::string& name, const std::string& precision) const {
  auto it = graphs.find(name);
  if (it == graphs.end())
    throw Error("Bundle " + dir + " (method " + method + ") has no " + name + " graph" +
                (name == "query_encoder" ? ": it composes queries without phi (use method sum, slerp, image, text or average)."
                                         : "."));
  auto jt = it->second.find(precision);
  if (jt == it->second.end()) {
    std::string have;
    for (auto& [p, _] : it->second) have += (have.empty() ? "" : ", ") + p;
    throw Error("Bundle " + dir + " has no " + precision + " " + name + " (it has " + have + ").");
  }
  return jt->second;
}

std::string Bundle::default_method() const {
  if (has_graph("query_encoder")) return "phi";
  return (method == "slerp" || method == "sum") ? method : "slerp";
}

std::string Bundle::bundle_id() const {
  std::string text = "{\"graphs\": {";
  bool first = true;
  std::map<std::string, std::string> flat;
  for (const auto& [name, variants] : graphs)
    for (const auto& [precision, spec] : variants) flat[name + "." + precision] = spec.sha256;
  for (const auto& [key, sha] : flat) {
    text += (first ? "\"" : ", \"") + key + "\": \"" + sha + "\"";
    first = false;
  }
  text += "}, \"tokenizer\": \"" + tokenizer.sha256 + "\"}";
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
  return hex(digest, len);
}

std::string Bundle::verified(const std::string& relative, const std::string& sha256) const {
  std::string path = (fs::path(dir) / relative).string();
  if (!verify_ || verified_.count(path)) return path;
  std::string actual = sha256_file(path);
  if (actual != sha256)
    throw Error("Bundle file " + path + " is corrupt or was changed: its sha256 is " + actual +
                ", the manifest records " + sha256 + ". Do not edit bundle files; " + kRemedy + ".");
  verified_[path] = true;
  return path;
}

}  // namespace zscir
