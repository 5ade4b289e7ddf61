// Searching a zscir-infer gallery (the faiss store: zscir_infer/stores/faiss_sqlite.py) from C++.
//
// gallery.json names the index file and the count it covers; items.sqlite holds id -> name, path; the
// committed count is its row count. A fresh index file (its count equals the store's) is read with FAISS's
// C++ read_index (Debian's libfaiss 1.7.3 reads the Flat, IVF, HNSW and IVF-PQ+RFlat files that the
// Python faiss-cpu writes) and searched with the runtime's search parameters. A stale or absent index
// file is searched exactly over features.f32 when the gallery's spec resolves to Flat (what the Python
// store then builds in memory); other stale indexes are refused with the command that rebuilds them.
#include <faiss/Index.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/AutoTune.h>
#include <faiss/index_io.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "zscir/zscir.hpp"

namespace fs = std::filesystem;

namespace zscir {

namespace {
constexpr int64_t kAutoFlatMax = 100000;  // zscir_infer.search.AUTO_FLAT_MAX
constexpr int kHnswEfSearch = 64, kIvfNprobe = 16, kRefineKFactor = 16;

bool resolves_to_flat(const std::string& spec, int64_t n) {
  std::string s;
  for (char c : spec)
    if (!std::isspace(static_cast<unsigned char>(c))) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s == "flat" || (s == "auto" && n < kAutoFlatMax);
}

std::vector<faiss::Index*> parts(faiss::Index* index) {
  std::vector<faiss::Index*> out;
  while (index) {
    out.push_back(index);
    if (auto* r = dynamic_cast<faiss::IndexRefine*>(index))
      index = r->base_index;
    else if (auto* p = dynamic_cast<faiss::IndexPreTransform*>(index))
      index = p->index;
    else
      index = nullptr;
  }
  return out;
}
}  // namespace

struct Gallery::Impl {
  std::string root;
  sqlite3* db = nullptr;
  std::unique_ptr<faiss::Index> index;
  std::vector<float> features;  // exact scan only
  ~Impl() {
    if (db) sqlite3_close(db);
  }
};

Gallery Gallery::open(const std::string& dir) {
  fs::path root(dir), meta_path = fs::path(dir) / "gallery.json";
  if (!fs::is_regular_file(meta_path))
    throw Error(dir + " is not a gallery (no gallery.json): build one with zscir-infer index SRC --out " + dir + ".");
  nlohmann::json meta;
  try {
    std::ifstream in(meta_path);
    meta = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(meta_path.string() + " is not valid JSON (" + e.what() + ").");
  }
  if (meta.value("format", "") != "zscir-gallery" || meta.value("format_version", 0) != 1)
    throw Error(meta_path.string() + " is not a zscir-gallery v1 gallery; rebuild it with zscir-infer index.");
  if (meta.value("store", "faiss") != "faiss")
    throw Error("Gallery " + dir + " uses the '" + meta.value("store", "") + "' store; zscir_query searches the "
                "embedded faiss store only (query a milvus gallery with zscir-infer or the server).");
  Gallery g;
  g.impl = std::make_shared<Impl>();
  g.impl->root = dir;
  g.dim_ = meta.at("embed_dim").get<int>();
  g.bundle_id = meta.value("bundle_id", "");
  fs::path db_path = root / "items.sqlite";
  if (sqlite3_open_v2(db_path.c_str(), &g.impl->db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK)
    throw Error("Cannot open " + db_path.string() + ": " + sqlite3_errmsg(g.impl->db) + ".");
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(g.impl->db, "SELECT COUNT(*) FROM items", -1, &stmt, nullptr) != SQLITE_OK)
    throw Error(db_path.string() + " is not a zscir gallery store (" + sqlite3_errmsg(g.impl->db) + ").");
  if (sqlite3_step(stmt) == SQLITE_ROW) g.count_ = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);

  const nlohmann::json& info = meta.at("index");
  const std::string file = info.value("file", nlohmann::json()).is_string() ? info["file"].get<std::string>() : "";
  const bool fresh = !file.empty() && info.value("count", int64_t(-1)) == g.count_ && fs::is_regular_file(root / file);
  if (g.count_ == 0) {
    g.how = "empty gallery";
  } else if (fresh) {
    faiss::Index* raw = nullptr;
    try {
      raw = faiss::read_index((root / file).c_str());
    } catch (const std::exception& e) {
      throw Error("FAISS cannot read " + (root / file).string() + " (" + e.what() + ").");
    }
    g.impl->index.reset(raw);
    if (raw->ntotal != g.count_ || raw->d != g.dim_)
      throw Error(file + " does not match items.sqlite; run zscir-infer index --rebuild.");
    std::map<std::string, double> params;  // zscir_infer.search.default_search_params, then gallery.json's
    for (faiss::Index* part : parts(raw)) {
      if (dynamic_cast<faiss::IndexHNSW*>(part)) params["efSearch"] = kHnswEfSearch;
      if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(part)) params["nprobe"] = std::min<double>(kIvfNprobe, ivf->nlist);
      if (dynamic_cast<faiss::IndexRefine*>(part)) params["k_factor_rf"] = kRefineKFactor;
    }
    const nlohmann::json overrides = info.value("params", nlohmann::json::object());
    for (auto& [name, value] : overrides.items()) params[name] = value.get<double>();
    faiss::ParameterSpace space;
    for (auto& [name, value] : params) space.set_index_parameter(raw, name, value);
    g.how = "faiss index " + file + " (" + info.value("factory", std::string("?")) + ")";
  } else if (resolves_to_flat(info.value("spec", std::string("auto")), g.count_)) {
    fs::path features = root / "features.f32";
    const size_t want = size_t(g.count_) * g.dim_;
    if (!fs::is_regular_file(features) || fs::file_size(features) < want * sizeof(float))
      throw Error(features.string() + " holds fewer vectors than items.sqlite commits: rebuild the gallery.");
    g.impl->features.resize(want);
    FILE* f = std::fopen(features.c_str(), "rb");
    size_t got = f ? std::fread(g.impl->features.data(), sizeof(float), want, f) : 0;
    if (f) std::fclose(f);
    if (got != want) throw Error("Cannot read " + features.string() + ".");
    g.how = "exact scan of features.f32 (the index file is stale)";
  } else {
    throw Error("Gallery " + dir + "'s index file is stale (it covers " + std::to_string(info.value("count", 0)) +
                " of " + std::to_string(g.count_) + " items) and its spec is not flat: run zscir-infer index --rebuild.");
  }
  return g;
}

std::vector<Hit> Gallery::search(const std::vector<float>& query, int k) const {
  if (static_cast<int>(query.size()) != dim_)
    throw Error("A query of dimension " + std::to_string(query.size()) + " does not fit gallery " + impl->root +
                " (dimension " + std::to_string(dim_) + ").");
  std::vector<Hit> hits;
  const int64_t kk = std::min<int64_t>(k, count_);
  if (kk <= 0) return hits;
  std::vector<float> scores(kk);
  std::vector<faiss::Index::idx_t> ids(kk, -1);
  if (impl->index) {
    impl->index->search(1, query.data(), kk, scores.data(), ids.data());
  } else {
    std::vector<std::pair<float, int64_t>> all(count_);
    for (int64_t i = 0; i < count_; i++) {
      const float* row = &impl->features[size_t(i) * dim_];
      float s = 0.0f;
      for (int d = 0; d < dim_; d++) s += row[d] * query[d];
      all[i] = {s, i};
    }
    std::partial_sort(all.begin(), all.begin() + kk, all.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    for (int64_t i = 0; i < kk; i++) {
      scores[i] = all[i].first;
      ids[i] = all[i].second;
    }
  }
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(impl->db, "SELECT name, path FROM items WHERE id = ?", -1, &stmt, nullptr);
  for (int64_t i = 0; i < kk; i++) {
    if (ids[i] < 0) continue;
    Hit hit{ids[i], "", "", scores[i]};
    sqlite3_reset(stmt);
    sqlite3_bind_int64(stmt, 1, ids[i]);
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      hit.name = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      hit.path = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1));
    }
    hits.push_back(std::move(hit));
  }
  sqlite3_finalize(stmt);
  return hits;
}

}  // namespace zscir
