/* Memory read bandwidth: threads summing a 2 GiB buffer with AVX2 loads, best of six passes,
 * once in ordinary 4 KiB pages and once in a buffer the kernel is asked to back with
 * transparent huge pages (Linux, MADV_HUGEPAGE). On a VM the two can differ (a TLB miss walks
 * two page tables), and both move with the host's load: the roofline uses the larger.
 *
 *   gcc -O3 -mavx2 -fopenmp tools/membw.c -o membw && OMP_NUM_THREADS=2 ./membw
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

static double best_of_six(const char *p, size_t n) {
  double best = 0;
  for (int r = 0; r < 6; r++) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    __m256i tot = _mm256_setzero_si256();
#pragma omp parallel
    {
      __m256i acc = _mm256_setzero_si256();
#pragma omp for
      for (size_t i = 0; i < n; i += 128) {
        acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(p + i)));
        acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(p + i + 32)));
        acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(p + i + 64)));
        acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(p + i + 96)));
      }
#pragma omp critical
      tot = _mm256_add_epi64(tot, acc);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    double g = n / s / 1e9;
    if (g > best) best = g;
    printf("  %.1f GB/s (%lld)\n", g, (long long)_mm256_extract_epi64(tot, 0));
  }
  return best;
}

int main(void) {
  size_t n = (size_t)2 << 30;
  double best[2];
  for (int huge = 0; huge < 2; huge++) {
    char *p = aligned_alloc(2 << 20, n);
    if (!p) { perror("aligned_alloc"); return 1; }
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, n, MADV_HUGEPAGE);
#endif
    memset(p, 1, n);
    printf("%s pages:\n", huge ? "huge" : "4 KiB");
    best[huge] = best_of_six(p, n);
    free(p);
  }
  printf("best %.1f (4 KiB pages %.1f, huge pages %.1f)\n",
         best[0] > best[1] ? best[0] : best[1], best[0], best[1]);
  return 0;
}
