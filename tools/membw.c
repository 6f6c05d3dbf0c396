#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
#include <omp.h>
int main(){ size_t n = (size_t)2<<30; char*p=aligned_alloc(64,n); memset(p,1,n);
 double best=0; for(int r=0;r<6;r++){ struct timespec a,b; clock_gettime(CLOCK_MONOTONIC,&a);
 __m256i tot=_mm256_setzero_si256();
 #pragma omp parallel
 { __m256i acc=_mm256_setzero_si256(); 
   #pragma omp for
   for(size_t i=0;i<n;i+=128){ acc=_mm256_add_epi64(acc,_mm256_load_si256((__m256i*)(p+i))); acc=_mm256_add_epi64(acc,_mm256_load_si256((__m256i*)(p+i+32))); acc=_mm256_add_epi64(acc,_mm256_load_si256((__m256i*)(p+i+64))); acc=_mm256_add_epi64(acc,_mm256_load_si256((__m256i*)(p+i+96)));}
   #pragma omp critical
   tot=_mm256_add_epi64(tot,acc); }
 clock_gettime(CLOCK_MONOTONIC,&b); double s=(b.tv_sec-a.tv_sec)+(b.tv_nsec-a.tv_nsec)*1e-9; double g=n/s/1e9; if(g>best)best=g; printf("%.1f GB/s (%lld)\n",g,(long long)_mm256_extract_epi64(tot,0));}
 printf("best %.1f\n",best); }
