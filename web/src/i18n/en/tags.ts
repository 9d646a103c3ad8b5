export const tags = {
};
