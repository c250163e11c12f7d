#include <algorithm>
#include <iostream>
#include <memory>
#include <vector>

template <typename T>
class Matrix {
public:
    Matrix(size_t r, size_t c) : rows_(r), cols_(c), data_(std::make_unique<T[]>(r * c)) {}
    T &operator()(size_t i, size_t j) noexcept { return data_[i * cols_ + j]; }
    [[nodiscard]] size_t rows() const { return rows_; }
private:
    size_t rows_, cols_;
    std::unique_ptr<T[]> data_;
};

int main() {
    std::vector<int> v{5, 3, 9, 1};
    std::sort(v.begin(), v.end(), [](int a, int b) { return a > b; });
    Matrix<double> m(3, 3);
    m(1, 1) = 2.5e-3;
    std::cout << v.front() << " " << m(1, 1) << std::endl;
    return 0;
}
