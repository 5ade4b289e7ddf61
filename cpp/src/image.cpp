// Image decoding and preprocessing, equal to zscir_infer.preprocess (Pillow) pixel for pixel.
//
// Decoding: JPEG through libjpeg with its defaults (islow IDCT, fancy upsampling: what Pillow's decoder
// uses), PNG through libpng with Pillow's conversions to RGB (alpha dropped, not composited; 16-bit
// channels keep their high byte, 16-bit grayscale is rounded (v + 128) / 257 as zscir does); the EXIF
// orientation is applied as ImageOps.exif_transpose does. Resizing is Pillow's ImagingResample
// (libImaging/Resample.c) for 8-bit images: a separable, antialiased filter (its support scaled by the
// downscale factor), coefficients normalized per output pixel and stored in 22-bit fixed point, each pass
// rounding and clipping to uint8; horizontal pass first, then vertical.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>
#include <png.h>

#include "zscir/zscir.hpp"

namespace zscir {

namespace {
constexpr long long kMaxPixels = 89478485;  // Pillow's decompression bomb limit, as zscir_infer.preprocess

// --- EXIF orientation ---------------------------------------------------------------------------------------
int exif_orientation(const unsigned char* tiff, size_t n) {  // a TIFF header + IFD0
  if (n < 8) return 1;
  bool le = tiff[0] == 'I' && tiff[1] == 'I';
  if (!le && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](size_t o) -> unsigned { return le ? tiff[o] | tiff[o + 1] << 8 : tiff[o] << 8 | tiff[o + 1]; };
  auto u32 = [&](size_t o) -> size_t {
    return le ? (size_t)tiff[o] | (size_t)tiff[o + 1] << 8 | (size_t)tiff[o + 2] << 16 | (size_t)tiff[o + 3] << 24
              : (size_t)tiff[o] << 24 | (size_t)tiff[o + 1] << 16 | (size_t)tiff[o + 2] << 8 | (size_t)tiff[o + 3];
  };
  size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  unsigned entries = u16(ifd);
  for (unsigned e = 0; e < entries; e++) {
    size_t at = ifd + 2 + 12 * e;
    if (at + 12 > n) break;
    if (u16(at) == 0x0112 && u16(at + 2) == 3) {
      unsigned v = u16(at + 8);
      return (v >= 1 && v <= 8) ? static_cast<int>(v) : 1;
    }
  }
  return 1;
}

Image transpose(const Image& in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const int W = in.width, H = in.height;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? H : W;
  out.height = swap ? W : H;
  out.rgb.resize(in.rgb.size());
  for (int y = 0; y < out.height; y++) {
    for (int x = 0; x < out.width; x++) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; break;                  // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;  // ROTATE_180
        case 4: sy = H - 1 - y; break;                  // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                  // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break;          // ROTATE_270
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;  // TRANSVERSE
        case 8: sx = W - 1 - y; sy = x; break;          // ROTATE_90
      }
      std::memcpy(&out.rgb[(size_t(y) * out.width + x) * 3], &in.rgb[(size_t(sy) * W + sx) * 3], 3);
    }
  }
  return out;
}

void check_size(const std::string& path, long long w, long long h) {
  if (w <= 0 || h <= 0) throw Error(path + " has no pixels.");
  if (w * h > kMaxPixels)
    throw Error(path + " is " + std::to_string(w) + "x" + std::to_string(h) + " pixels, above the limit of " +
                std::to_string(kMaxPixels) + " (a decompression bomb guard): downscale the file.");
}

// --- JPEG ---------------------------------------------------------------------------------------------------
struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

Image decode_jpeg(const std::string& path, FILE* f) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.output_message = [](j_common_ptr) {};
  Image img;
  std::vector<unsigned char> row;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + " could not be decoded (" + std::string(err.message) + "): the file is truncated or corrupt.");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, f);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + " is a CMYK JPEG, which zscir_query does not convert: save it as RGB.");
  }
  check_size(path, cinfo.image_width, cinfo.image_height);
  const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  int orientation = 1;
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0)
      orientation = exif_orientation(m->data + 6, m->data_length - 6);
  jpeg_start_decompress(&cinfo);
  img.width = cinfo.output_width;
  img.height = cinfo.output_height;
  img.rgb.resize(size_t(img.width) * img.height * 3);
  row.resize(size_t(img.width) * cinfo.output_components);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW rows[1] = {row.data()};
    int y = cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, rows, 1);
    unsigned char* out = &img.rgb[size_t(y) * img.width * 3];
    for (int x = 0; x < img.width; x++)
      for (int c = 0; c < 3; c++) out[x * 3 + c] = gray ? row[x] : row[x * 3 + c];
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return transpose(img, orientation);
}

// --- PNG ----------------------------------------------------------------------------------------------------
Image decode_png(const std::string& path, FILE* f) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  Image img;
  std::vector<unsigned char> pixels;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(path + " could not be decoded as PNG: the file is truncated or corrupt.");
  }
  png_init_io(png, f);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  check_size(path, w, h);
  int orientation = 1;
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_len = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) orientation = exif_orientation(exif, exif_len);
#endif
  const bool gray16 = depth == 16 && type == PNG_COLOR_TYPE_GRAY;  // Pillow: mode I;16, rounded to 8 bits
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16 && !gray16) png_set_strip_16(png);  // the high byte, as Pillow's ;16B unpackers
  if (gray16) png_set_swap(png);                        // native-endian uint16 rows
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  pixels.resize(rowbytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels.data() + y * rowbytes;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  img.width = w;
  img.height = h;
  img.rgb.resize(size_t(w) * h * 3);
  for (png_uint_32 y = 0; y < h; y++) {
    for (png_uint_32 x = 0; x < w; x++) {
      unsigned char* out = &img.rgb[(size_t(y) * w + x) * 3];
      if (gray16) {
        uint16_t v;
        std::memcpy(&v, rows[y] + x * 2, 2);
        out[0] = out[1] = out[2] = static_cast<unsigned char>((v + 128u) / 257u);
      } else if (channels <= 2) {  // gray, gray + alpha (dropped)
        out[0] = out[1] = out[2] = rows[y][x * channels];
      } else {  // RGB, RGBA (alpha dropped, not composited: Image.convert("RGB"))
        std::memcpy(out, rows[y] + x * channels, 3);
      }
    }
  }
  return transpose(img, orientation);
}

// --- Pillow's resample ------------------------------------------------------------------------------------
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // xmin, count per output pixel
  std::vector<int32_t> kk;  // fixed point
};

// precompute_coeffs + normalize_coeffs_8bpc of libImaging/Resample.c (box = the whole image).
Coeffs precompute(int in_size, int out_size, bool bicubic) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double (*filter)(double) = bicubic ? bicubic_filter : bilinear_filter;
  const double support_base = bicubic ? 2.0 : 1.0;
  double filterscale, scale;
  filterscale = scale = static_cast<double>(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = support_base * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  std::vector<double> kk(size_t(out_size) * c.ksize, 0.0);
  c.bounds.resize(size_t(out_size) * 2);
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[size_t(xx) * c.ksize];
    int x;
    for (x = 0; x < xmax; x++) {
      double w = filter((x + xmin - center + 0.5) * inv_filterscale);
      k[x] = w;
      ww += w;
    }
    if (ww != 0.0)
      for (x = 0; x < xmax; x++) k[x] /= ww;
    for (; x < c.ksize; x++) k[x] = 0;
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  c.kk.resize(kk.size());
  for (size_t i = 0; i < kk.size(); i++)
    c.kk[i] = kk[i] < 0 ? static_cast<int>(-0.5 + kk[i] * (1 << kPrecisionBits))
                        : static_cast<int>(0.5 + kk[i] * (1 << kPrecisionBits));
  return c;
}

inline uint8_t clip8(int v) {
  int s = v >> kPrecisionBits;  // arithmetic shift, as the C code
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

Image resample_horizontal(const Image& in, int out_w, const Coeffs& c) {
  Image out;
  out.width = out_w;
  out.height = in.height;
  out.rgb.resize(size_t(out_w) * in.height * 3);
  for (int y = 0; y < in.height; y++) {
    const uint8_t* line = &in.rgb[size_t(y) * in.width * 3];
    uint8_t* dst = &out.rgb[size_t(y) * out_w * 3];
    for (int xx = 0; xx < out_w; xx++) {
      const int xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.kk[size_t(xx) * c.ksize];
      int ss0 = 1 << (kPrecisionBits - 1), ss1 = ss0, ss2 = ss0;
      for (int x = 0; x < xmax; x++) {
        ss0 += line[(x + xmin) * 3 + 0] * k[x];
        ss1 += line[(x + xmin) * 3 + 1] * k[x];
        ss2 += line[(x + xmin) * 3 + 2] * k[x];
      }
      dst[xx * 3 + 0] = clip8(ss0);
      dst[xx * 3 + 1] = clip8(ss1);
      dst[xx * 3 + 2] = clip8(ss2);
    }
  }
  return out;
}

Image resample_vertical(const Image& in, int out_h, const Coeffs& c) {
  Image out;
  out.width = in.width;
  out.height = out_h;
  out.rgb.resize(size_t(in.width) * out_h * 3);
  const size_t stride = size_t(in.width) * 3;
  for (int yy = 0; yy < out_h; yy++) {
    const int ymin = c.bounds[yy * 2], ymax = c.bounds[yy * 2 + 1];
    const int32_t* k = &c.kk[size_t(yy) * c.ksize];
    uint8_t* dst = &out.rgb[size_t(yy) * stride];
    for (size_t xc = 0; xc < stride; xc++) {
      int ss = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; y++) ss += in.rgb[size_t(y + ymin) * stride + xc] * k[y];
      dst[xc] = clip8(ss);
    }
  }
  return out;
}

Image pad(const Image& in, int left, int top, int right, int bottom, int fill) {
  Image out;
  out.width = in.width + left + right;
  out.height = in.height + top + bottom;
  out.rgb.assign(size_t(out.width) * out.height * 3, static_cast<uint8_t>(fill));
  for (int y = 0; y < in.height; y++)
    std::memcpy(&out.rgb[(size_t(y + top) * out.width + left) * 3], &in.rgb[size_t(y) * in.width * 3], size_t(in.width) * 3);
  return out;
}

Image crop(const Image& in, int left, int top, int w, int h) {
  Image out;
  out.width = w;
  out.height = h;
  out.rgb.resize(size_t(w) * h * 3);
  for (int y = 0; y < h; y++)
    std::memcpy(&out.rgb[size_t(y) * w * 3], &in.rgb[(size_t(y + top) * in.width + left) * 3], size_t(w) * 3);
  return out;
}

// Python's round(): half to even (the default floating point rounding mode).
long long py_round(double v) { return static_cast<long long>(std::nearbyint(v)); }

Image center_crop_or_pad(Image image, int size, int fill) {
  if (size > image.width || size > image.height) {
    int pad_w = std::max(size - image.width, 0), pad_h = std::max(size - image.height, 0);
    image = pad(image, pad_w / 2, pad_h / 2, (pad_w + 1) / 2, (pad_h + 1) / 2, fill);
    if (image.width == size && image.height == size) return image;
  }
  int top = static_cast<int>(py_round((image.height - size) / 2.0));
  int left = static_cast<int>(py_round((image.width - size) / 2.0));
  return crop(image, left, top, size, size);
}
}  // namespace

Image decode_image(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error("Image " + path + " cannot be read: " + std::strerror(errno) + ".");
  unsigned char magic[8] = {0};
  size_t n = std::fread(magic, 1, 8, f);
  std::rewind(f);
  try {
    Image img;
    if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
      img = decode_jpeg(path, f);
    else if (n == 8 && png_sig_cmp(magic, 0, 8) == 0)
      img = decode_png(path, f);
    else
      throw Error(path + " is neither JPEG nor PNG, the formats zscir_query decodes; convert it.");
    std::fclose(f);
    return img;
  } catch (...) {
    std::fclose(f);
    throw;
  }
}

Image resize(const Image& in, int width, int height, const std::string& interpolation) {
  const bool bicubic = interpolation != "bilinear";
  Image out = in;
  if (width != in.width) out = resample_horizontal(out, width, precompute(in.width, width, bicubic));
  if (height != in.height) out = resample_vertical(out, height, precompute(in.height, height, bicubic));
  return out;
}

Image resize_and_crop(const Image& input, const PreprocessSpec& spec) {
  Image image = input;
  const int size = spec.image_size;
  if (spec.resize_mode == "targetpad") {  // SEARLE's TargetPad, in IEEE double as Python computes it
    const int w = image.width, h = image.height;
    const double longest = std::max(w, h), shortest = std::min(w, h);
    if (longest / shortest >= spec.target_ratio) {
      const double padded_short = longest / spec.target_ratio;
      const int pad_x = std::max(static_cast<int>((padded_short - w) / 2), 0);
      const int pad_y = std::max(static_cast<int>((padded_short - h) / 2), 0);
      if (pad_x || pad_y) image = pad(image, pad_x, pad_y, pad_x, pad_y, spec.fill_color);
    }
  }
  if (spec.resize_mode == "squash" && image.width != image.height)
    // Pillow 13 resizes some non-square images to a square with the vertical pass first, by a rule this
    // program does not reproduce: refuse rather than compute pixels that differ from the Python runtime's.
    throw Error("This bundle's preprocessing squashes images to a square, and zscir_query reproduces Pillow's "
                "squash only for square images (this one is " + std::to_string(image.width) + "x" +
                std::to_string(image.height) + "): crop or pad it to a square first, or use the Python runtime.");
  int new_w = size, new_h = size;
  if (spec.resize_mode == "longest") {
    const double ratio = std::max(double(image.height) / size, double(image.width) / size);
    new_w = static_cast<int>(std::max(1LL, py_round(image.width / ratio)));
    new_h = static_cast<int>(std::max(1LL, py_round(image.height / ratio)));
  } else if (spec.resize_mode != "squash") {  // shortest, targetpad: torchvision's Resize(int)
    const bool portrait = image.width <= image.height;
    const long long shortside = portrait ? image.width : image.height, longside = portrait ? image.height : image.width;
    const int new_long = static_cast<int>(static_cast<double>(static_cast<long long>(size) * longside) / shortside);
    new_w = portrait ? size : new_long;
    new_h = portrait ? new_long : size;
  }
  if (new_w != image.width || new_h != image.height) image = resize(image, new_w, new_h, spec.interpolation);
  if (spec.resize_mode != "squash") image = center_crop_or_pad(image, size, spec.fill_color);
  return image;
}

std::vector<float> to_pixels(const Image& square, const PreprocessSpec& spec) {
  const int s = spec.image_size;
  if (square.width != s || square.height != s) throw Error("to_pixels needs a " + std::to_string(s) + " square image.");
  float table[3][256];
  for (int c = 0; c < 3; c++)
    for (int v = 0; v < 256; v++) table[c][v] = (static_cast<float>(v) / 255.0f - spec.mean[c]) / spec.std[c];
  std::vector<float> out(size_t(3) * s * s);
  for (int c = 0; c < 3; c++)
    for (size_t i = 0; i < size_t(s) * s; i++) out[size_t(c) * s * s + i] = table[c][square.rgb[i * 3 + c]];
  return out;
}

}  // namespace zscir
