#include <cstdio>
int main(int argc, char** argv) { std::puts("fjord: under construction"); return 0; }
