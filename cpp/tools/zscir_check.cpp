// zscir_check: the C++ tokenizer and image preprocessing alone, for parity tests against the Python runtime.
//
//   zscir_check tokens TOKENIZER_JSON STRINGS_JSON OUT   # int64 ids [N, 77] little-endian, raw
//   zscir_check clean STRINGS_JSON                       # JSON array of cleaned strings
//   zscir_check pixels BUNDLE|PREPROCESS_JSON IMAGE OUT  # float32 [3, S, S] raw, the bundle's preprocessing
//   zscir_check resized BUNDLE|PREPROCESS_JSON IMAGE OUT # uint8 [S, S, 3] after resize and crop
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "zscir/zscir.hpp"

namespace {
std::vector<std::string> read_strings(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw zscir::Error("Cannot read " + path);
  return nlohmann::json::parse(in).get<std::vector<std::string>>();
}

template <typename T>
void write_raw(const std::string& path, const std::vector<T>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
  if (!out) throw zscir::Error("Cannot write " + path);
}
}  // namespace

int main(int argc, char** argv) {
  try {
    std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "tokens" && argc == 5) {
      zscir::TokenizerSpec spec;
      zscir::Tokenizer tok = zscir::Tokenizer::from_file(argv[2], spec);
      std::vector<int64_t> all;
      std::vector<std::string> texts = read_strings(argv[3]);
      auto t0 = std::chrono::steady_clock::now();
      int failed = 0;
      for (const auto& text : texts) {
        std::vector<int64_t> ids;
        try {
          ids = tok.encode(text);
        } catch (const zscir::Error&) {
          ids.assign(spec.context_length, -1);  // not UTF-8: counted as a mismatch
          failed++;
        }
        all.insert(all.end(), ids.begin(), ids.end());
      }
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      write_raw(argv[4], all);
      std::cout << nlohmann::json{{"texts", texts.size()}, {"failed", failed}, {"ms", ms}}.dump() << "\n";
      return 0;
    }
    if (cmd == "clean" && argc == 3) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& text : read_strings(argv[2])) out.push_back(zscir::Tokenizer::clean(text));
      std::cout << out.dump() << "\n";
      return 0;
    }
    if ((cmd == "pixels" || cmd == "resized") && argc == 5) {
      std::string source = argv[2];
      zscir::PreprocessSpec spec;
      if (source.size() > 5 && source.substr(source.size() - 5) == ".json") {
        std::ifstream in(source);
        spec = zscir::parse_preprocess(std::string(std::istreambuf_iterator<char>(in), {}));
      } else {
        spec = zscir::Bundle::load(source, false).preprocess;
      }
      zscir::Image square = zscir::resize_and_crop(zscir::decode_image(argv[3]), spec);
      if (cmd == "pixels")
        write_raw(argv[4], zscir::to_pixels(square, spec));
      else
        write_raw(argv[4], square.rgb);
      return 0;
    }
    std::cerr << "usage: zscir_check tokens TOKENIZER_JSON STRINGS_JSON OUT | clean STRINGS_JSON | "
                 "pixels BUNDLE IMAGE OUT | resized BUNDLE IMAGE OUT\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "zscir_check: error: " << e.what() << "\n";
    return 1;
  }
}
