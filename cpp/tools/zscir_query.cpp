// zscir_query: one composed query from a bundle, printed as JSON; with --gallery, also its top-k.
//
//   zscir_query --bundle B --image FILE --text TEXT [--method phi|slerp|image|text|average|sum]
//               [--template T] [--alpha A] [--precision fp32] [--engine openvino] [--threads N]
//               [--gallery G -k K] [--repeat N] [--no-verify]
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "zscir/zscir.hpp"

namespace {
const char* kUsage =
    "usage: zscir_query --bundle DIR --image FILE --text TEXT [--method phi|slerp|image|text|average|sum]\n"
    "                   [--template T] [--alpha A] [--precision fp32|fp16|int8] [--engine openvino]\n"
    "                   [--threads N] [--gallery DIR -k K] [--repeat N] [--no-verify]\n"
    "Prints JSON: the unit query vector (and the gallery's top-k). --repeat N times N more queries (warm).\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "zscir_query: error: " << message << "\n" << kUsage;
  std::exit(2);
}

double number(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    double v = std::stod(value, &used);
    if (used != value.size()) throw std::invalid_argument(value);
    return v;
  } catch (const std::exception&) {
    usage_error(flag + " needs a number, got '" + value + "'");
  }
}
}  // namespace

int main(int argc, char** argv) {
  std::string bundle_dir, image, text, method, templ, precision = "fp32", gallery_dir;
  bool have_text = false, verify = true;
  double alpha = -1.0;
  int k = 10, repeat = 0;
  zscir::EngineOptions options;
  for (int i = 1; i < argc; i++) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--bundle") bundle_dir = value();
    else if (arg == "--image") image = value();
    else if (arg == "--text") { text = value(); have_text = true; }
    else if (arg == "--method") method = value();
    else if (arg == "--template") templ = value();
    else if (arg == "--alpha") alpha = number(arg, value());
    else if (arg == "--precision") precision = value();
    else if (arg == "--engine") options.kind = value();
    else if (arg == "--threads") options.threads = static_cast<int>(number(arg, value()));
    else if (arg == "--gallery") gallery_dir = value();
    else if (arg == "-k" || arg == "--k") k = static_cast<int>(number(arg, value()));
    else if (arg == "--repeat") repeat = static_cast<int>(number(arg, value()));
    else if (arg == "--no-verify") verify = false;
    else if (arg == "-h" || arg == "--help") { std::cout << kUsage; return 0; }
    else usage_error("unknown argument '" + arg + "'");
  }
  if (bundle_dir.empty()) usage_error("--bundle is required");
  if (!have_text && method != "image") usage_error("--text is required (the modification text)");
  if (image.empty() && method != "text") usage_error("--image is required (the reference image)");
  if (alpha != -1.0 && (alpha < 0.0 || alpha > 1.0)) usage_error("--alpha is the text weight of slerp, in [0, 1]");
  if (k < 1) usage_error("-k must be at least 1");
  try {
    auto t0 = std::chrono::steady_clock::now();
    zscir::Bundle bundle = zscir::Bundle::load(bundle_dir, verify);
    std::optional<zscir::Gallery> gallery;
    if (!gallery_dir.empty()) {
      gallery = zscir::Gallery::open(gallery_dir);
      if (!gallery->bundle_id.empty() && gallery->bundle_id != bundle.bundle_id())
        throw zscir::Error("Gallery " + gallery_dir + " was encoded by bundle " + gallery->bundle_id + ", not by " +
                           bundle_dir + " (" + bundle.bundle_id() + "): features of different encoders are not comparable.");
    }
    zscir::QueryEncoder encoder(bundle, options, precision);
    if (method.empty()) method = bundle.default_method();
    zscir::QueryTiming first;
    std::vector<float> q = encoder.encode(image, text, method, templ, alpha, &first);
    double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json out;
    out["bundle"] = bundle.dir;
    out["bundle_id"] = bundle.bundle_id();
    out["method"] = method;
    out["engine"] = encoder.engine_description();
    out["precision"] = precision;
    out["dim"] = q.size();
    out["vector"] = q;
    out["warnings"] = encoder.warnings;
    std::vector<double> totals;
    zscir::QueryTiming sum;
    for (int r = 0; r < repeat; r++) {
      zscir::QueryTiming t;
      encoder.encode(image, text, method, templ, alpha, &t);
      totals.push_back(t.total_ms);
      sum.decode_ms += t.decode_ms; sum.preprocess_ms += t.preprocess_ms; sum.tokenize_ms += t.tokenize_ms;
      sum.image_graph_ms += t.image_graph_ms; sum.text_graph_ms += t.text_graph_ms; sum.query_graph_ms += t.query_graph_ms;
    }
    nlohmann::json timing{{"first_query_with_load_ms", load_ms}, {"first_query_ms", first.total_ms}};
    if (repeat > 0) {
      std::vector<double> sorted = totals;
      std::sort(sorted.begin(), sorted.end());
      const double n = repeat;
      timing["repeat"] = repeat;
      timing["median_ms"] = sorted[sorted.size() / 2];
      timing["min_ms"] = sorted.front();
      timing["stages_mean_ms"] = {{"decode", sum.decode_ms / n}, {"preprocess", sum.preprocess_ms / n},
                                  {"tokenize", sum.tokenize_ms / n}, {"image_graph", sum.image_graph_ms / n},
                                  {"text_graph", sum.text_graph_ms / n}, {"query_graph", sum.query_graph_ms / n}};
      timing["all_ms"] = totals;
    }
    out["timing_ms"] = timing;
    if (gallery) {
      auto s0 = std::chrono::steady_clock::now();
      std::vector<zscir::Hit> hits = gallery->search(q, k);
      double search_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count();
      nlohmann::json results = nlohmann::json::array();
      for (size_t r = 0; r < hits.size(); r++)
        results.push_back({{"rank", r + 1}, {"id", hits[r].id}, {"name", hits[r].name}, {"path", hits[r].path},
                           {"score", hits[r].score}});
      out["gallery"] = {{"path", gallery_dir}, {"count", gallery->count()}, {"search", gallery->how},
                        {"search_ms", search_ms}};
      out["results"] = results;
    }
    std::cout << out.dump(1) << "\n";
    for (const auto& w : encoder.warnings) std::cerr << "zscir_query: warning: " << w << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "zscir_query: error: " << e.what() << "\n";
    return 1;
  }
}
