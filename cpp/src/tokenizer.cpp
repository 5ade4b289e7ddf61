// CLIP BPE over the bundle's tokenizer.json, and zscir's text cleaning without ftfy.
//
// open_clip's tokenizer (the reference): clean(text), then re.findall(CLIP's regex), each piece mapped
// byte by byte to the byte-level alphabet, BPE with the "</w>" end-of-word suffix, vocabulary lookup; the
// pieces "<start_of_text>" / "<end_of_text>" are their special ids. The regex is read from tokenizer.json,
// where zscir-export writes every character class as explicit code point ranges, so no Unicode
// category table is needed here. The cleaning's tables (str.lower, str.isspace, html.unescape) are
// generated from Python by scripts/cpp_gen_tables.py. ftfy.fix_text is not reproduced (docs/cpp.md).
#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "zscir/zscir.hpp"

namespace zscir {

namespace {
struct LowerEntry {
  char32_t cp;
  const char32_t* to;
};
struct CodeRange {
  char32_t lo, hi;
};
struct EntityEntry {
  const char32_t* name;
  const char32_t* value;
};
struct InvalidCharref {
  uint32_t num;
  const char32_t* value;
};
#include "generated/text_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), c,
                             [](char32_t v, const CodeRange& r) { return v < r.lo; });
  return it != std::begin(table) && c <= (it - 1)->hi;
}

// --- UTF-8 -----------------------------------------------------------------------------------------------
std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (n < 0 || i + n >= s.size())
      throw Error("The text is not valid UTF-8 (byte " + std::to_string(i) + "): pass UTF-8 text.");
    char32_t cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k <= n; k++) {
      unsigned char d = s[i + k];
      if ((d >> 6) != 2) throw Error("The text is not valid UTF-8 (byte " + std::to_string(i + k) + "): pass UTF-8 text.");
      cp = (cp << 6) | (d & 0x3F);
    }
    static const char32_t min_by_len[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_by_len[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      throw Error("The text is not valid UTF-8 (byte " + std::to_string(i) + "): pass UTF-8 text.");
    out.push_back(cp);
    i += n + 1;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// --- html.unescape (Python's algorithm and tables) --------------------------------------------------------
const char32_t* html5_lookup(const std::u32string& name) {
  auto it = std::lower_bound(std::begin(kHtml5), std::end(kHtml5), name,
                             [](const EntityEntry& e, const std::u32string& v) { return std::u32string(e.name) < v; });
  return (it != std::end(kHtml5) && name == it->name) ? it->value : nullptr;
}

bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }
bool is_hex(char32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

std::u32string numeric_charref(const std::u32string& digits, int base) {
  uint64_t num = 0;
  for (char32_t c : digits) {
    uint64_t d = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
    num = std::min<uint64_t>(num * base + d, 0x7FFFFFFFull);  // saturate: anything above 0x10FFFF is U+FFFD
  }
  for (const auto& inv : kInvalidCharrefs)
    if (inv.num == num) return inv.value;
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  for (char32_t inv : kInvalidCodepoints)
    if (inv == num) return U"";
  return std::u32string(1, static_cast<char32_t>(num));
}

std::u32string html_unescape(const std::u32string& s) {
  if (s.find(U'&') == std::u32string::npos) return s;
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    size_t j = i + 1;
    if (j < s.size() && s[j] == U'#') {
      size_t k = j + 1;
      if (k < s.size() && is_digit(s[k])) {  // #[0-9]+;?
        while (k < s.size() && is_digit(s[k])) k++;
        std::u32string digits = s.substr(j + 1, k - j - 1);
        if (k < s.size() && s[k] == U';') k++;
        out += numeric_charref(digits, 10);
        i = k;
        continue;
      }
      if (k + 1 < s.size() && (s[k] == U'x' || s[k] == U'X') && is_hex(s[k + 1])) {  // #[xX][0-9a-fA-F]+;?
        size_t m = k + 1;
        while (m < s.size() && is_hex(s[m])) m++;
        std::u32string digits = s.substr(k + 1, m - k - 1);
        if (m < s.size() && s[m] == U';') m++;
        out += numeric_charref(digits, 16);
        i = m;
        continue;
      }
      out += s[i++];  // '#' is outside the name class: no match
      continue;
    }
    // [^\t\n\f <&#;]{1,32};?
    size_t k = j;
    auto in_name = [](char32_t c) {
      return c != U'\t' && c != U'\n' && c != U'\f' && c != U' ' && c != U'<' && c != U'&' && c != U'#' && c != U';';
    };
    while (k < s.size() && k - j < 32 && in_name(s[k])) k++;
    if (k == j) {
      out += s[i++];
      continue;
    }
    if (k < s.size() && s[k] == U';') k++;
    std::u32string name = s.substr(j, k - j);
    if (const char32_t* v = html5_lookup(name)) {
      out += v;
    } else {
      bool found = false;
      for (size_t x = name.size() - 1; x > 1; x--) {
        if (const char32_t* v2 = html5_lookup(name.substr(0, x))) {
          out += v2;
          out += name.substr(x);
          found = true;
          break;
        }
      }
      if (!found) {
        out += U'&';
        out += name;
      }
    }
    i = k;
  }
  return out;
}

// --- str.split() / str.lower() ---------------------------------------------------------------------------
bool is_space(char32_t c) { return in_ranges(kSpace, c); }

std::u32string collapse_whitespace(const std::u32string& s) {
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) i++;
    if (i == s.size()) break;
    if (!out.empty()) out += U' ';
    while (i < s.size() && !is_space(s[i])) out += s[i++];
  }
  return out;
}

bool final_sigma(const std::u32string& s, size_t i) {
  long j = static_cast<long>(i) - 1;
  while (j >= 0 && in_ranges(kCaseIgnorable, s[j])) j--;
  if (j < 0 || !in_ranges(kCased, s[j])) return false;
  size_t k = i + 1;
  while (k < s.size() && in_ranges(kCaseIgnorable, s[k])) k++;
  return k == s.size() || !in_ranges(kCased, s[k]);
}

std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    char32_t c = s[i];
    if (c == 0x3A3) {
      out += final_sigma(s, i) ? char32_t(0x3C2) : char32_t(0x3C3);
      continue;
    }
    auto it = std::lower_bound(std::begin(kLower), std::end(kLower), c,
                               [](const LowerEntry& e, char32_t v) { return e.cp < v; });
    if (it != std::end(kLower) && it->cp == c)
      out += it->to;
    else
      out += c;
  }
  return out;
}

// --- the pre-tokenizer regex of tokenizer.json -----------------------------------------------------------
struct Atom {
  std::vector<CodeRange> ranges;  // sorted
  bool plus = false;
  bool matches(char32_t c) const {
    auto it = std::upper_bound(ranges.begin(), ranges.end(), c, [](char32_t v, const CodeRange& r) { return v < r.lo; });
    return it != ranges.begin() && c <= (it - 1)->hi;
  }
};
using Alternative = std::vector<Atom>;

char32_t parse_hex_escape(const std::string& p, size_t& i) {  // at "\x{HEX}"
  if (p.compare(i, 3, "\\x{") != 0) throw Error("tokenizer.json: unsupported regex syntax at offset " + std::to_string(i));
  size_t end = p.find('}', i);
  char32_t v = static_cast<char32_t>(std::stoul(p.substr(i + 3, end - i - 3), nullptr, 16));
  i = end + 1;
  return v;
}

std::vector<Alternative> parse_pattern(const std::string& p) {
  std::vector<Alternative> alts(1);
  size_t i = 0;
  while (i < p.size()) {
    if (p[i] == '|') {
      alts.emplace_back();
      i++;
    } else if (p[i] == '[') {
      Atom atom;
      i++;
      while (i < p.size() && p[i] != ']') {
        char32_t lo = parse_hex_escape(p, i), hi = lo;
        if (i < p.size() && p[i] == '-') {
          i++;
          hi = parse_hex_escape(p, i);
        }
        atom.ranges.push_back({lo, hi});
      }
      i++;  // ]
      if (i < p.size() && p[i] == '+') {
        atom.plus = true;
        i++;
      }
      std::sort(atom.ranges.begin(), atom.ranges.end(), [](const CodeRange& a, const CodeRange& b) { return a.lo < b.lo; });
      alts.back().push_back(std::move(atom));
    } else {
      throw Error("tokenizer.json: the pre-tokenizer regex has syntax zscir_query does not read at offset " +
                  std::to_string(i) + " (expected the explicit classes zscir-export writes); re-export the bundle.");
    }
  }
  for (const auto& alt : alts)
    for (size_t k = 0; k + 1 < alt.size(); k++)
      if (alt[k].plus) throw Error("tokenizer.json: a repeated class inside a sequence is not supported; re-export.");
  return alts;
}

// re.findall: at each position the first alternative that matches, greedy; unmatched characters skipped.
std::vector<std::u32string> find_all(const std::vector<Alternative>& alts, const std::u32string& s) {
  std::vector<std::u32string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t matched = 0;
    for (const auto& alt : alts) {
      size_t pos = i;
      bool ok = true;
      for (const auto& atom : alt) {
        if (pos >= s.size() || !atom.matches(s[pos])) {
          ok = false;
          break;
        }
        pos++;
        if (atom.plus)
          while (pos < s.size() && atom.matches(s[pos])) pos++;
      }
      if (ok && pos > i) {
        matched = pos - i;
        break;
      }
    }
    if (matched) {
      pieces.push_back(s.substr(i, matched));
      i += matched;
    } else {
      i++;
    }
  }
  return pieces;
}

std::array<std::string, 256> byte_encoder() {
  std::vector<int> bs, cs;
  for (int b = '!'; b <= '~'; b++) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; b++) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; b++) bs.push_back(b);
  cs = bs;
  int n = 0;
  for (int b = 0; b < 256; b++) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  }
  std::array<std::string, 256> out;
  for (size_t k = 0; k < bs.size(); k++) {
    std::string u;
    append_utf8(u, static_cast<char32_t>(cs[k]));
    out[bs[k]] = u;
  }
  return out;
}
}  // namespace

struct Tokenizer::Impl {
  std::vector<Alternative> pattern;
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<std::string, int> ranks;  // "a b" -> merge rank
  std::string suffix = "</w>";
  std::array<std::string, 256> bytes;
  std::unordered_map<std::string, int64_t> specials;
  mutable std::mutex mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  std::vector<int64_t> bpe(const std::string& token_utf8) const {
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = cache.find(token_utf8);
      if (it != cache.end()) return it->second;
    }
    std::vector<std::string> word;  // one symbol per byte-level character
    for (size_t i = 0; i < token_utf8.size();) {
      unsigned char c = token_utf8[i];
      size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
      word.push_back(token_utf8.substr(i, n));
      i += n;
    }
    word.back() += suffix;
    while (word.size() > 1) {
      int best = std::numeric_limits<int>::max();
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < word.size(); i++) {
        auto it = ranks.find(word[i] + " " + word[i + 1]);
        if (it != ranks.end() && it->second < best) {
          best = it->second;
          best_at = i;
        }
      }
      if (best == std::numeric_limits<int>::max()) break;
      const std::string first = word[best_at], second = word[best_at + 1];
      std::vector<std::string> merged;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
          merged.push_back(first + second);
          i += 2;
        } else {
          merged.push_back(word[i++]);
        }
      }
      word.swap(merged);
    }
    std::vector<int64_t> ids;
    for (const auto& symbol : word) {
      auto it = vocab.find(symbol);
      if (it == vocab.end()) throw Error("tokenizer.json has no token '" + symbol + "': the vocabulary is incomplete.");
      ids.push_back(it->second);
    }
    std::lock_guard<std::mutex> lock(mutex);
    cache.emplace(token_utf8, ids);
    return ids;
  }
};

Tokenizer Tokenizer::from_file(const std::string& path, const TokenizerSpec& spec) {
  nlohmann::json j;
  try {
    std::ifstream in(path);
    if (!in) throw Error("Tokenizer file " + path + " cannot be read: the bundle is incomplete; re-export it.");
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + " is not a Hugging Face tokenizers JSON (" + e.what() + "); re-export the bundle.");
  }
  auto impl = std::make_shared<Impl>();
  try {
    const auto& model = j.at("model");
    if (model.at("type") != "BPE") throw Error(path + ": the model is not BPE; it is not a zscir CLIP tokenizer.");
    if (model.contains("end_of_word_suffix") && model["end_of_word_suffix"].is_string())
      impl->suffix = model["end_of_word_suffix"].get<std::string>();
    for (auto& [token, id] : model.at("vocab").items()) impl->vocab[token] = id.get<int64_t>();
    int rank = 0;
    for (const auto& merge : model.at("merges")) {
      std::string key = merge.is_string() ? merge.get<std::string>()
                                          : merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>();
      impl->ranks.emplace(key, rank++);
    }
    const auto& pre = j.at("pre_tokenizer");
    const nlohmann::json steps = pre.value("pretokenizers", nlohmann::json::array({pre}));
    const nlohmann::json* split = nullptr;
    for (const auto& p : steps)
      if (p.value("type", "") == "Split") split = &p;
    if (!split) throw Error(path + ": no Split pre-tokenizer (CLIP's regex); it is not a zscir CLIP tokenizer.");
    impl->pattern = parse_pattern(split->at("pattern").at("Regex").get<std::string>());
    for (const auto& added : j.at("added_tokens")) impl->specials[added.at("content")] = added.at("id").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + " lacks a field zscir's CLIP tokenizer has (" + std::string(e.what()) + "); re-export the bundle.");
  }
  impl->bytes = byte_encoder();
  for (const char* name : {"<start_of_text>", "<end_of_text>"}) {
    auto it = impl->specials.find(name);
    int64_t want = std::string(name) == "<start_of_text>" ? spec.sot_id : spec.eot_id;
    if (it == impl->specials.end() || it->second != want)
      throw Error(path + ": " + name + " is not id " + std::to_string(want) + " as the manifest says; re-export the bundle.");
  }
  Tokenizer t;
  t.impl = impl;
  t.spec = spec;
  return t;
}

std::string Tokenizer::clean(const std::string& utf8) {
  std::u32string s = decode_utf8(utf8);
  s = html_unescape(html_unescape(s));
  return encode_utf8(lower(collapse_whitespace(s)));
}

std::vector<int64_t> Tokenizer::content_ids(const std::string& cleaned_utf8) const {
  std::vector<int64_t> ids;
  for (const auto& piece : find_all(impl->pattern, decode_utf8(cleaned_utf8))) {
    std::string utf8 = encode_utf8(piece);
    auto special = impl->specials.find(utf8);
    if (special != impl->specials.end()) {
      ids.push_back(special->second);
      continue;
    }
    std::string mapped;
    for (unsigned char b : utf8) mapped += impl->bytes[b];
    auto part = impl->bpe(mapped);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

std::vector<int64_t> Tokenizer::encode(const std::string& utf8, bool* truncated) const {
  std::vector<int64_t> row{spec.sot_id};
  auto content = content_ids(clean(utf8));
  row.insert(row.end(), content.begin(), content.end());
  row.push_back(spec.eot_id);
  const size_t n = static_cast<size_t>(spec.context_length);
  bool cut = row.size() > n;
  if (cut) {
    row.resize(n - 1);
    row.push_back(spec.eot_id);
  }
  row.resize(n, spec.pad_id);
  if (truncated) *truncated = cut;
  return row;
}

// --- templates (zscir_infer.contract.fill_template) -------------------------------------------------------
std::string fill_template(const std::string& templ, const std::string& caption,
                          const std::optional<std::string>& placeholder) {
  std::string out;
  bool has_caption = false, has_placeholder_field = false;
  for (size_t i = 0; i < templ.size(); i++) {
    char c = templ[i];
    if ((c == '{' || c == '}') && i + 1 < templ.size() && templ[i + 1] == c) {
      out += c;
      i++;
    } else if (c == '{') {
      size_t end = templ.find('}', i);
      if (end == std::string::npos) throw Error("Template '" + templ + "' has an unmatched '{'; write literal braces as {{ }}.");
      std::string field = templ.substr(i + 1, end - i - 1);
      if (field == "caption") {
        out += caption;
        has_caption = true;
      } else if (field == "placeholder") {
        out += placeholder.value_or("");
        has_placeholder_field = true;
      } else {
        throw Error("Template '" + templ + "' has the field {" + field + "}, which zscir_query does not fill; use "
                    "{caption} and {placeholder}.");
      }
      i = end;
    } else if (c == '}') {
      throw Error("Template '" + templ + "' has an unmatched '}'; write literal braces as {{ }}.");
    } else {
      out += c;
    }
  }
  if (!has_caption) throw Error("Template '" + templ + "' has no '{caption}' field: the text would be dropped.");
  if (placeholder && !has_placeholder_field && templ.find(*placeholder) == std::string::npos)
    throw Error("Template '" + templ + "' does not contain the placeholder '" + *placeholder +
                "': the image token would be dropped. Put {placeholder} where the image belongs.");
  if (!placeholder && has_placeholder_field) {  // collapse the spaces around the empty field, as Python does
    std::u32string collapsed = collapse_whitespace(decode_utf8(out));
    return encode_utf8(collapsed);
  }
  return out;
}

}  // namespace zscir
