#include <cstdio>

int main() {
  std::puts("toga " TOGA_VERSION);
  return 0;
}
